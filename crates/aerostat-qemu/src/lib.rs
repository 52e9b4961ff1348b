//! aerostat-qemu
