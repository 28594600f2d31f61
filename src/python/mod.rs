//! Python environments: pinning requirements to wheels ([`pin`]), installing a pinned set
//! once into a stored, path-independent tree ([`install`], [`relocate`]), and the base
//! interpreters they run on ([`interpreter`]).

pub mod error;

pub use error::{Error, Result};
pub mod install;
pub mod interpreter;
pub mod pin;
pub mod relocate;
mod resolve;
mod spec;
mod tool;
pub mod wheel;

pub use install::{ensure_env, env_key, find_env, missing_wheels, EnvReport};
pub use interpreter::Interpreter;
pub use pin::{pin, PinOptions, PinReport, Pins, Resolver, PINS_SCHEMA};
pub use relocate::{render, ENV_META};
pub use spec::{EnvSpec, Package};
