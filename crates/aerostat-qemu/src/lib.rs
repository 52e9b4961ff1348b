//! aerostat-qemu
pub mod qmp;
