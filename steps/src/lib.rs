//! `wf-steps`: the typed steps of wf and the one registry that lists them. Each step is one file:
//! its params, its output artifact, the `Step` impl, and its tests; one that outgrows a file is a
//! directory split by concern, the `Step` impl in its `mod.rs`.

pub mod command;
pub mod evaluate;
pub mod export_checkpoint;
pub mod facts;
pub mod fetch_dataset;
pub mod fsx_import;
pub mod sharded_transform;
pub mod train_unet;

use wf_engine::Registry;

/// Every step kind wf knows, registered explicitly (no inventory magic: this list is the source).
pub fn registry() -> Registry {
    let mut r = Registry::new();
    r.register(command::Command);
    r.register(fetch_dataset::FetchDataset);
    r.register(fsx_import::FsxImport);
    r.register(sharded_transform::ShardedTransform);
    r.register(train_unet::TrainUnet);
    r.register(export_checkpoint::ExportCheckpoint);
    r.register(evaluate::Evaluate);
    r
}
