//! The compiled snapshot: the model the agent last synced (cluster state with
//! the plugin's pod reports laid over it), this node's policy engine compiled
//! from it, and the generation. Kept between syncs, so a change recompiles
//! only the policies it touches and the backend patches only what changed;
//! the denied log explains from here instead of building a model.

use ipnetwork::IpNetwork;

use crate::denied::ExplainView;
use crate::model::Model;
use crate::policy::{Dirty, Options, PolicyEngine, PolicyIr};

/// What the last sync compiled.
#[derive(Debug)]
pub struct Compiled {
    pub generation: String,
    /// The model, as the denied log explains from it.
    view: ExplainView,
    engine: PolicyEngine,
}

impl Compiled {
    /// A full compile of `model` for `node`.
    pub fn new(
        model: Model,
        generation: &str,
        node: &str,
        cluster_cidrs: &[IpNetwork],
        options: Options,
    ) -> Compiled {
        let engine = PolicyEngine::new(&model, node, cluster_cidrs, options);
        Compiled { generation: generation.into(), view: ExplainView::new(model), engine }
    }

    /// Moves to `model`, recompiling only what changed.
    pub fn update(&mut self, model: Model, generation: &str) {
        self.engine.update(self.view.base(), &model);
        self.view = ExplainView::new(model);
        self.generation = generation.into();
    }

    /// The model compiled.
    pub fn model(&self) -> &Model {
        self.view.base()
    }

    /// The model for explaining denied packets.
    pub fn explain_view(&self) -> &ExplainView {
        &self.view
    }

    /// This node's compiled policy.
    pub fn ir(&self) -> &PolicyIr {
        self.engine.ir()
    }

    /// What changed since the last call (everything after `new`).
    pub fn take_dirty(&mut self) -> Dirty {
        self.engine.take_dirty()
    }

    /// Notes on what could not be enforced as written.
    pub fn notes(&self) -> Vec<String> {
        self.engine.notes()
    }
}
