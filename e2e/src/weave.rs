//! A reproduction of weave-npc 1.9.6's FORWARD chains and ipsets, for
//! comparison only (never a weft backend). Being written.

use crate::error::{E2eError, Result};
use crate::Testbed;

impl Testbed {
    /// Renders weave-npc 1.9.6's rules from the cluster dir into every node.
    pub fn apply_weave(&self) -> Result<()> {
        Err(E2eError::Manifest { reason: "weave-1.9.6 reproduction not written yet".into() })
    }
}
