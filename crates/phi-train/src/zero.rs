//! ZeRO stage 1 (Rajbhandari et al., 2020; DeepSpeed's `zero_optimization.stage = 1`): the
//! AdamW moments sharded across the data-parallel ranks ([`crate::TrainConfig::zero`] = 1).
//!
//! Each trained parameter has one owner rank ([`Shards`]), which alone keeps its moments and
//! updates it. A step sums each gradient onto its owner only (`MPI_Reduce`: half the traffic
//! of an all-reduce, and the other ranks drop that gradient at once), the owners update what
//! they own, and each owner broadcasts the updated values. The moments — 2 × 4 bytes per
//! parameter, half of f32 training's weights + gradients + moments — take 1/N per rank.
//!
//! The step is the unsharded one: every update sees the gradient summed over all ranks, clipped
//! by the norm of all gradients (each rank's share of the squared norm, summed), at the same
//! learning rate; only the order of float sums differs. A checkpoint's `optimizer.bin` has the
//! unsharded format: the shards are gathered to rank 0 ([`gather_optimizer`]), so a sharded
//! run resumes unsharded, at another number of ranks, or sharded again ([`Shards::keep_owned`]).

use std::collections::HashMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::{Bytes, Tensor, TensorData};

use crate::dist::{Collective, buckets, present_grads, put_back_grads, take_grads};
use crate::error::{Result, TrainError};

/// Which rank owns each trained parameter (one that requires a gradient): contiguous runs of
/// the module's parameters in visiting order (the same on every rank), balanced by size, so
/// each of the N ranks updates — and keeps AdamW moments for — about 1/N of the values.
#[derive(Debug, Clone)]
pub struct Shards {
    /// (parameter, values, owner) in visiting order.
    params: Vec<(ParamId, usize, usize)>,
    owners: HashMap<ParamId, usize>,
    rank: usize,
    size: usize,
}

impl Shards {
    /// The shards of `module`'s trained parameters among `size` ranks, seen from `rank`.
    pub fn new<M: Module>(module: &M, rank: usize, size: usize) -> Self {
        struct Trained(Vec<(ParamId, usize)>);
        impl ModuleVisitor for Trained {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                let value = param.val();
                if value.is_require_grad() {
                    self.0.push((param.id, value.shape().num_elements()));
                }
            }
        }
        let mut trained = Trained(Vec::new());
        module.visit(&mut trained);
        let total: u128 = trained.0.iter().map(|(_, n)| *n as u128).sum::<u128>().max(1);
        let mut before = 0u128;
        let params: Vec<(ParamId, usize, usize)> = trained
            .0
            .into_iter()
            .map(|(id, n)| {
                // The rank whose 1/N of all values holds this parameter's middle value:
                // non-decreasing along the list, so each rank's parameters are one run.
                let middle = before + n as u128 / 2;
                before += n as u128;
                (id, n, ((middle * size as u128 / total) as usize).min(size - 1))
            })
            .collect();
        let owners = params.iter().map(|&(id, _, owner)| (id, owner)).collect();
        Shards { params, owners, rank, size }
    }

    /// The rank that updates parameter `id` (`None`: not a trained parameter).
    pub fn owner(&self, id: ParamId) -> Option<usize> {
        self.owners.get(&id).copied()
    }

    /// The number of parameter values rank `rank` owns.
    pub fn owned_values(&self, rank: usize) -> usize {
        self.params.iter().filter(|p| p.2 == rank).map(|p| p.1).sum()
    }

    /// Sums every gradient in `grads` across the ranks onto its owner: afterwards `grads` holds
    /// this rank's own parameters' summed gradients and nothing else. Staged through host
    /// memory in buckets, as [`crate::dist::all_reduce_grads`].
    pub fn reduce_grads<M: Module>(&self, module: &M, grads: &mut GradientsParams, world: &dyn Collective) -> Result<()> {
        self.check(world)?;
        let found = present_grads(module, grads, world)?;
        if let Some((id, _)) = found.iter().find(|(id, _)| self.owner(*id).is_none()) {
            return Err(TrainError::Distributed(format!(
                "{}: parameter {id} has a gradient but did not require one when the optimizer state was sharded",
                world.describe()
            )));
        }
        let owner = |id: ParamId| self.owner(id).expect("checked above");
        for range in buckets(&found, owner) {
            let root = owner(found[range.start].0);
            let (mut bucket, taken) = take_grads(module, grads, &found[range]);
            world.reduce_f32(&mut bucket, root);
            if root == self.rank {
                put_back_grads(grads, &bucket, taken);
            }
        }
        Ok(())
    }

    /// Every trained parameter as its owner holds it, on every rank: after the owners' update,
    /// each owner broadcasts its parameters' values (in buckets, through host memory).
    pub fn broadcast_weights<M: Module>(&self, mut module: M, world: &dyn Collective) -> Result<M> {
        self.check(world)?;
        let list: Vec<(ParamId, usize)> = self.params.iter().map(|&(id, n, _)| (id, n)).collect();
        let owner = |id: ParamId| self.owners[&id];
        for range in buckets(&list, owner) {
            let ids = &list[range];
            let root = owner(ids[0].0);
            let n = ids.iter().map(|(_, n)| n).sum();
            let mut bucket = if root == self.rank {
                let mut pack = Pack { ids, values: Vec::with_capacity(n) };
                module.visit(&mut pack);
                pack.values
            } else {
                vec![0.0; n]
            };
            // Not an error returned on this rank alone, which would leave the others waiting in
            // the broadcast: a panic, which ends the whole job (see `dist::install`).
            assert_eq!(bucket.len(), n, "{}: the model's trained parameters changed after the optimizer state was sharded", world.describe());
            world.broadcast_f32(&mut bucket, root);
            if root != self.rank {
                module = module.map(&mut Put { ids, values: &bucket, at: 0 });
            }
        }
        Ok(module)
    }

    /// `optim` with the state of this rank's own parameters only: a fresh optimizer is
    /// unchanged; a whole one drops the other ranks' moments.
    pub fn keep_owned(&self, optim: ModuleOptimizer) -> Result<ModuleOptimizer> {
        let bytes = optim.into_bytes().map_err(|e| TrainError::Distributed(format!("the optimizer state does not serialize: {e}")))?;
        let reader = burn_pack::Reader::from_bytes(bytes).map_err(|e| TrainError::Distributed(format!("the optimizer state does not read back: {e}")))?;
        let kept = record::filter(reader, |id| self.mine(id)).map_err(|e| TrainError::Distributed(format!("the optimizer state: {e}")))?;
        optim.from_bytes(kept).map_err(|e| TrainError::Distributed(format!("the optimizer shard does not load: {e}")))
    }

    /// The optimizer state in the record file `path` (a checkpoint's `optimizer.bin`, whole or
    /// gathered from shards), loaded into `optim` for this rank's own parameters only: the file
    /// is read lazily and the other ranks' moments are never loaded, so resuming takes the
    /// memory of a shard (and a host copy of it), not of the whole state.
    pub fn load_owned(&self, optim: ModuleOptimizer, path: &std::path::Path) -> Result<ModuleOptimizer> {
        let bad = |e: &dyn std::fmt::Display| TrainError::Checkpoint { path: path.to_path_buf(), message: format!("{}: {e}", path.display()) };
        let reader = burn_pack::Reader::from_file_exact(path).map_err(|e| bad(&e))?;
        let kept = record::filter(reader, |id| self.mine(id)).map_err(|e| bad(&e))?;
        optim.from_bytes(kept).map_err(|e| bad(&e))
    }

    fn mine(&self, id: u64) -> bool {
        self.owner(ParamId::from(id)) == Some(self.rank)
    }

    fn check(&self, world: &dyn Collective) -> Result<()> {
        if (world.rank(), world.size()) != (self.rank, self.size) {
            return Err(TrainError::Distributed(format!(
                "{}: the optimizer state was sharded for rank {} of {}",
                world.describe(),
                self.rank,
                self.size
            )));
        }
        Ok(())
    }
}

/// The whole optimizer state of a sharded run, as one process would hold it: every rank's
/// shard (`optim`) gathered to rank 0 and merged into one burnpack record, the bytes of
/// [`ModuleOptimizer::save`]'s format — `Some` on rank 0, `None` on the others. A collective:
/// every rank calls it, and takes part even when its shard does not serialize (sending
/// nothing, which rank 0 then refuses), so that a failure ends every rank rather than leave
/// some waiting. Rank 0 holds the gathered shards and the merged record in host memory
/// meanwhile (about twice the whole state; the others a copy of their shard), as torch FSDP's
/// full state dict gathers to rank 0's host memory.
pub fn gather_optimizer(optim: &ModuleOptimizer, world: &dyn Collective) -> Result<Option<Bytes>> {
    let (bytes, failed) = match optim.into_bytes() {
        Ok(b) => (b, None),
        Err(e) => (Bytes::from_bytes_vec(Vec::new()), Some(TrainError::Distributed(format!("{}: the optimizer shard does not serialize: {e}", world.describe())))),
    };
    let gathered = world.gather_bytes(&bytes, 0);
    drop(bytes);
    if let Some(e) = failed {
        return Err(e);
    }
    match gathered {
        Some(shards) => record::merge(shards).map(Some),
        None => Ok(None),
    }
}

/// The values of `ids` (a bucket of the visiting order), in that order.
struct Pack<'a> {
    ids: &'a [(ParamId, usize)],
    values: Vec<f32>,
}

impl ModuleVisitor for Pack<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if self.ids.iter().any(|(id, _)| *id == param.id) {
            let data = param.val().into_data().convert::<f32>();
            self.values.extend(data.iter::<f32>());
        }
    }
}

/// Sets the parameters of `ids` to `values` (packed as [`Pack`] packs them), keeping what the
/// optimizer keeps of a parameter's autodiff state: whether it requires a gradient, its
/// checkpointing strategy, its distributed mark.
struct Put<'a> {
    ids: &'a [(ParamId, usize)],
    values: &'a [f32],
    at: usize,
}

impl ModuleMapper for Put<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if !self.ids.iter().any(|(id, _)| *id == param.id) {
            return param;
        }
        let (id, tensor, mapper) = param.consume();
        let shape = tensor.shape();
        let n = shape.num_elements();
        let mut fresh = Tensor::<D>::from_data(TensorData::new(self.values[self.at..self.at + n].to_vec(), shape), &tensor.device());
        self.at += n;
        if let Some(strategy) = tensor.gradient_checkpointing_strategy() {
            fresh = fresh.with_gradient_checkpointing_strategy(strategy);
        }
        if tensor.is_require_grad() {
            fresh = fresh.require_grad();
        }
        if tensor.is_distributed() {
            fresh = fresh.set_distributed(id);
        }
        Param::from_mapped_value(id, fresh, mapper)
    }
}

/// burn's optimizer record (burnpack) cut by parameter and put back together. The record keys
/// every parameter's state by its id: tensors carry it (`param_id`, named `"{id}.{field}"`),
/// scalars are named `"{id}.{field}"`, and the metadata maps `"{id}"` to the parameter's path.
mod record {
    use burn::tensor::Bytes;
    use burn_pack::{Reader, Writer};

    use crate::error::{Result, TrainError};

    fn bad(what: &str, e: impl std::fmt::Display) -> TrainError {
        TrainError::Distributed(format!("{what}: {e}"))
    }

    /// The parameter id a scalar or metadata key belongs to.
    fn id_of(key: &str) -> Option<u64> {
        key.split('.').next().and_then(|id| id.parse().ok())
    }

    /// The record `reader` reads with the state of the parameters `keep` accepts only (a
    /// file-backed reader loads the kept tensors only).
    pub fn filter(reader: Reader, keep: impl Fn(u64) -> bool) -> std::result::Result<Bytes, burn_pack::Error> {
        let scalars = reader.scalars().clone();
        let metadata = reader.metadata().clone();
        let tensors = reader.into_tensors()?;
        // Entries of no parameter (none today) are every shard's.
        let mut writer = Writer::new(tensors.into_iter().filter(|t| t.param_id.is_none_or(&keep)).collect());
        for (k, v) in scalars.iter().filter(|(k, _)| id_of(k).is_none_or(&keep)) {
            writer = writer.with_scalar(k, *v);
        }
        for (k, v) in metadata.iter().filter(|(k, _)| id_of(k).is_none_or(&keep)) {
            writer = writer.with_metadata(k, v);
        }
        writer.into_bytes()
    }

    /// One record of every parameter's state in `shards`, which must not overlap.
    pub fn merge(shards: Vec<Vec<u8>>) -> Result<Bytes> {
        let (mut tensors, mut scalars, mut metadata) = (Vec::new(), std::collections::BTreeMap::new(), std::collections::BTreeMap::new());
        let mut names = std::collections::HashSet::new();
        for (rank, bytes) in shards.into_iter().enumerate() {
            let reader = Reader::from_bytes(Bytes::from_bytes_vec(bytes)).map_err(|e| bad(&format!("rank {rank}'s optimizer shard does not read"), e))?;
            // Entries of no parameter are every shard's, and the same in each.
            for (k, v) in reader.scalars() {
                if scalars.insert(k.clone(), *v).is_some() && id_of(k).is_some() {
                    return Err(TrainError::Distributed(format!("rank {rank}'s optimizer shard holds {k} too: the shards overlap")));
                }
            }
            metadata.extend(reader.metadata().clone());
            for t in reader.into_tensors().map_err(|e| bad(&format!("rank {rank}'s optimizer shard does not read"), e))? {
                if !names.insert(t.name.clone()) {
                    return Err(TrainError::Distributed(format!("rank {rank}'s optimizer shard holds {} too: the shards overlap", t.name)));
                }
                tensors.push(t);
            }
        }
        // In name order: the same shards give the same bytes, whatever order they came in.
        tensors.sort_by(|a, b| a.name.cmp(&b.name));
        let mut writer = Writer::new(tensors);
        for (k, v) in &scalars {
            writer = writer.with_scalar(k, *v);
        }
        for (k, v) in &metadata {
            writer = writer.with_metadata(k, v);
        }
        writer.into_bytes().map_err(|e| bad("the gathered optimizer state does not write", e))
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::Device;
    use phi_core::{PhiConfig, PhiForCausalLM};

    use super::Shards;

    #[test]
    fn each_rank_owns_one_run_of_parameters_and_about_its_share_of_the_values() {
        let model = PhiForCausalLM::init(PhiConfig::phi3_family(64, 3, 4, 2, 96, 128), &Device::default().autodiff(), 0).unwrap();
        for size in [1, 2, 3, 4] {
            let shards = Shards::new(&model, 0, size);
            let owners: Vec<usize> = shards.params.iter().map(|p| p.2).collect();
            assert!(owners.windows(2).all(|w| w[0] <= w[1]), "{size} ranks: one run each: {owners:?}");
            let total: usize = shards.params.iter().map(|p| p.1).sum();
            let largest = shards.params.iter().map(|p| p.1).max().unwrap();
            for rank in 0..size {
                let owned = shards.owned_values(rank);
                // Within one parameter of an even share.
                assert!(owned.abs_diff(total / size) <= largest, "{size} ranks: rank {rank} owns {owned} of {total}");
            }
        }
    }
}
