//! `ensure-channel-first`: MONAI's EnsureChannelFirst. The data is already laid out channel-first by
//! `load` (a 4D file's last axis is the channel axis, a 3D file gets one channel), so this only marks it.

use serde::{Deserialize, Serialize};

use super::{Case, Field};
use crate::error::ImagingError;

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnsureChannelFirst {}

impl EnsureChannelFirst {
    /// The YAML name of this transform.
    pub const NAME: &'static str = "ensure-channel-first";
    /// What it does, for the reference.
    pub const DOC: &'static str =
        "a 4-D image's last axis becomes channel 0 (`EnsureChannelFirstd`)";
    pub const FIELDS: &'static [Field] = &[];

    pub fn name(&self) -> &'static str {
        Self::NAME
    }

    pub fn apply(&self, mut case: Case) -> Result<Case, ImagingError> {
        case.channel_first = true;
        Ok(case)
    }
}
