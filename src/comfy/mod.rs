//! The ComfyUI engine: a ComfyUI process we start, watch and stop ([`supervisor`]), and its
//! HTTP answers read across ComfyUI versions ([`api`]).

pub mod api;
pub mod supervisor;
