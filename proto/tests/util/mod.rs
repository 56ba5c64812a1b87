//! The simulated network of the scenario tests: the same one the fuzz targets drive
//! (`upmt_proto::sim`), so a scenario and a fuzz script see the cores the same way.

pub use upmt_proto::sim::*;
