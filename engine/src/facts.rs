//! Facts: what validation can tell about a step's output before anything runs — a data set's case
//! count, the spatial size of preprocessed samples — so that a consumer's `Step::check` catches a
//! mistake that would otherwise surface only when the consumer runs, hours later.
//!
//! A step declares the facts of its output (`Step::facts`) from its params and its inputs' facts; a
//! step that passes an artifact on passes its facts on. Validation moves them along the edges in
//! topological order (`workflow.rs`) and keeps them with each step (`StepDef::facts`) for the plan.
//! The engine never looks inside: producer and consumer agree on a type (in wf-steps, `facts.rs`),
//! and a consumer that finds another type (or none) simply knows nothing. Facts carry the position
//! of the values they come from, so an error found downstream points at the value to change.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

/// The facts of one artifact: any value the producing and the consuming step agree on.
#[derive(Clone)]
pub struct Facts(Arc<dyn Any + Send + Sync>);

impl Facts {
    pub fn new<T: Any + Send + Sync>(value: T) -> Self {
        Facts(Arc::new(value))
    }

    /// The facts as `T`, or `None` when the producer declared another type.
    pub fn get<T: Any>(&self) -> Option<&T> {
        self.0.downcast_ref()
    }
}

impl fmt::Debug for Facts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Facts(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_are_read_back_as_their_type_only() {
        let f = Facts::new(7usize);
        assert_eq!(f.get::<usize>(), Some(&7));
        assert_eq!(f.get::<u32>(), None);
        assert_eq!(f.clone().get::<usize>(), Some(&7));
    }
}
