//! The one explicit registry of step kinds. The binary builds it (`wf_steps::registry()`); the engine
//! only looks kinds up.

use crate::step::Step;
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Clone, Default)]
pub struct Registry {
    steps: BTreeMap<&'static str, Arc<dyn Step>>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a step kind. Panics on a duplicate kind: that is a programming error in the registry.
    pub fn register(&mut self, step: impl Step) -> &mut Self {
        let kind = step.kind();
        assert!(
            self.steps.insert(kind, Arc::new(step)).is_none(),
            "step kind `{kind}` registered twice"
        );
        self
    }

    pub fn get(&self, kind: &str) -> Option<&Arc<dyn Step>> {
        self.steps.get(kind)
    }

    pub fn kinds(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.steps.keys().copied()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn Step>> {
        self.steps.values()
    }
}
