//! The ComfyUI engine: a ComfyUI process we start, watch and stop ([`supervisor`]), the
//! folders it keeps files in ([`folders`]), its HTTP and websocket API ([`client`]), and its
//! HTTP answers read across ComfyUI versions ([`api`]).

pub mod api;
pub mod client;
mod error;
pub mod folders;
pub mod supervisor;

pub use client::{Client, Watch};
pub use error::{Error, Result};
pub use folders::{Folders, Refused};
