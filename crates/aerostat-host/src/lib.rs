//! aerostat-host
