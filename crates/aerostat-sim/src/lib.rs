//! aerostat-sim
