//! Data-parallel training across processes: one process per device, started by a launcher
//! (`mpirun -np N`, Slurm's `srun`), each holding the whole model and taking its share of every
//! optimizer step's micro-batches; gradients are summed across processes once per step, so every
//! process applies the same update and the weights stay the same everywhere.
//!
//! The collectives are an existing engine's, never an algorithm of ours: a [`Collective`] is the
//! handful of operations the training step needs, implemented by [`Single`] (one process: every
//! operation is the identity, today's run unchanged) and, with the `mpi` feature, by [`Mpi`]
//! (OpenMPI's or MPICH's `MPI_Allreduce` through the `mpi` crate). Gradients are staged through
//! host memory in buckets ([`all_reduce_grads`]): on the CPU backend that is where they are; on a
//! GPU it costs a device→host→device copy per step, which a direct NCCL path (cudarc's
//! `nccl::Comm::from_rank` over burn's device buffers) would avoid.
//!
//! MPI's world is one per process, so the collective a run uses is process-wide too, as
//! `torch.distributed`'s default group is: the program installs it once ([`install`], which the
//! `phi` tool does from [`from_launcher`]) and [`crate::Trainer`] and [`crate::fit()`] use
//! [`world`]. Without one installed, [`world`] is [`Single`].
//!
//! ```no_run
//! # fn demo() -> phi_train::Result<()> {
//! // Under `mpirun -np 2 my-trainer`: rank 0 and rank 1 of 2; run alone: None.
//! if let Some(world) = phi_train::dist::from_launcher()? {
//!     let _installed = phi_train::dist::install(world);
//!     // … build the objective and call phi_train::fit as in one process: each rank takes its
//!     // micro-batches, rank 0 writes the checkpoints and metrics.jsonl.
//! }
//! # Ok(()) }
//! ```

use std::sync::{Arc, RwLock};

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::{Tensor, TensorData};

use crate::error::{Result, TrainError};

/// The operations data-parallel training needs from a collective engine. Every rank must call
/// each collective operation in the same order with buffers of the same length (MPI's rule).
pub trait Collective: Send + Sync {
    /// This process's rank, `0..size()`.
    fn rank(&self) -> usize;

    /// The number of processes.
    fn size(&self) -> usize;

    /// Element-wise sum of `values` over every rank, written back into `values` on every rank.
    fn sum_f32(&self, values: &mut [f32]);

    /// As [`Self::sum_f32`], in f64 (losses and metrics).
    fn sum_f64(&self, values: &mut [f64]);

    /// The smallest and the largest of `value` over every rank (agreement checks).
    fn min_max(&self, value: u64) -> (u64, u64);

    /// Element-wise sum of `values` over every rank, written into `values` on rank `root`; the
    /// other ranks' `values` are left unspecified (`MPI_Reduce`: half the traffic of a sum every
    /// rank receives — ZeRO-1's gradients, each summed where its parameter is updated).
    fn reduce_f32(&self, values: &mut [f32], root: usize);

    /// Rank `root`'s `values` into `values` on every rank (`MPI_Bcast`: ZeRO-1's updated
    /// weights, from the rank that updated them).
    fn broadcast_f32(&self, values: &mut [f32], root: usize);

    /// Every rank's `bytes` on rank `root`, in rank order (`None` on the other ranks): ZeRO-1's
    /// optimizer shards, gathered for a checkpoint.
    fn gather_bytes(&self, bytes: &[u8], root: usize) -> Option<Vec<Vec<u8>>>;

    /// Returns once every rank has called it. Without a time limit: it is where the other ranks
    /// wait for rank 0's file work (data preparation, a cleanup), which may take long; a rank
    /// that dies meanwhile is the launcher's to notice.
    fn barrier(&self);

    /// Ends every process of the job with `code` (a rank that cannot go on must not leave the
    /// others waiting in a collective).
    fn abort(&self, code: i32) -> !;

    /// What this world is, for messages: "rank 1 of 4 (MPI)".
    fn describe(&self) -> String {
        format!("rank {} of {}", self.rank(), self.size())
    }
}

/// One process alone: rank 0 of 1, every collective the identity.
#[derive(Debug, Clone, Copy, Default)]
pub struct Single;

impl Collective for Single {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn sum_f32(&self, _: &mut [f32]) {}
    fn sum_f64(&self, _: &mut [f64]) {}
    fn min_max(&self, value: u64) -> (u64, u64) {
        (value, value)
    }
    fn reduce_f32(&self, _: &mut [f32], _: usize) {}
    fn broadcast_f32(&self, _: &mut [f32], _: usize) {}
    fn gather_bytes(&self, bytes: &[u8], _: usize) -> Option<Vec<Vec<u8>>> {
        Some(vec![bytes.to_vec()])
    }
    fn barrier(&self) {}
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

/// Ranks that are threads of one process, each with its own [`Collective`]: the same
/// reductions as processes, without a launcher — what the tests use to check a data-parallel
/// step against one rank, and how `gpu_check dp` drives one rank per GPU. The f32 collectives
/// go through shared host buffers, each rank summing its 1/N of the values (a reduce-scatter,
/// then every rank copies the sums); sums are taken in rank order, so every rank gets the same
/// bits. Like MPI, a rank that stops calling the collectives leaves the others waiting.
///
/// ```
/// # use phi_train::dist::{Collective, LocalGroup};
/// let ranks = LocalGroup::new(2);
/// let sums: Vec<f32> = std::thread::scope(|s| {
///     let handles: Vec<_> = ranks.iter().map(|r| s.spawn(move || {
///         let mut v = [r.rank() as f32 + 1.0];
///         r.sum_f32(&mut v);
///         v[0]
///     })).collect();
///     handles.into_iter().map(|h| h.join().unwrap()).collect()
/// });
/// assert_eq!(sums, [3.0, 3.0]);
/// ```
pub struct LocalGroup {
    rank: usize,
    shared: Arc<LocalShared>,
}

struct LocalShared {
    size: usize,
    barrier: std::sync::Barrier,
    /// Each rank's contribution to the f64 collective under way.
    slots: std::sync::Mutex<Vec<Vec<f64>>>,
    /// Each rank's buffer in the f32 collective under way (emptied once it is done).
    floats: std::sync::RwLock<Vec<Vec<f32>>>,
    /// The sums of the f32 collective under way, each rank writing its segment.
    sums: std::sync::Mutex<Vec<f32>>,
    /// The same for [`Collective::gather_bytes`].
    byte_slots: std::sync::Mutex<Vec<Vec<u8>>>,
}

impl LocalGroup {
    /// The `size` ranks of a new group; hand each to its own thread.
    pub fn new(size: usize) -> Vec<Arc<dyn Collective>> {
        assert!(size > 0, "a group has at least one rank");
        let shared = Arc::new(LocalShared { size, barrier: std::sync::Barrier::new(size), slots: std::sync::Mutex::new(vec![Vec::new(); size]),
            floats: std::sync::RwLock::new(vec![Vec::new(); size]),
            sums: std::sync::Mutex::new(Vec::new()),
            byte_slots: std::sync::Mutex::new(vec![Vec::new(); size]),
        });
        (0..size).map(|rank| Arc::new(LocalGroup { rank, shared: shared.clone() }) as Arc<dyn Collective>).collect()
    }

    /// Every rank's `values`, in rank order, to every rank.
    fn gather(&self, values: Vec<f64>) -> Vec<Vec<f64>> {
        self.shared.slots.lock().unwrap_or_else(|e| e.into_inner())[self.rank] = values;
        self.shared.barrier.wait();
        let all = self.shared.slots.lock().unwrap_or_else(|e| e.into_inner()).clone();
        // Nobody writes the next collective's values before everyone has read these.
        self.shared.barrier.wait();
        all
    }

    /// The element-wise sum of every rank's `values`, into `values` on `root` (every rank:
    /// `None`); the others' are left as they were, as `MPI_Reduce` leaves them.
    fn sum_into(&self, values: &mut [f32], root: Option<usize>) {
        let (n, size) = (values.len(), self.shared.size);
        self.shared.floats.write().unwrap_or_else(unpoisoned)[self.rank] = values.to_vec();
        self.shared.barrier.wait();
        // This rank's segment of the sums, added in rank order.
        let segment = n.div_ceil(size);
        let (lo, hi) = ((self.rank * segment).min(n), ((self.rank + 1) * segment).min(n));
        let part: Vec<f32> = {
            let all = self.shared.floats.read().unwrap_or_else(unpoisoned);
            assert!(all.iter().all(|v| v.len() == n), "LocalGroup: the ranks summed buffers of different lengths");
            (lo..hi).map(|i| all[1..].iter().fold(all[0][i], |acc, v| acc + v[i])).collect()
        };
        {
            let mut sums = self.shared.sums.lock().unwrap_or_else(unpoisoned);
            if sums.len() != n {
                *sums = vec![0.0; n];
            }
            sums[lo..hi].copy_from_slice(&part);
        }
        self.shared.barrier.wait();
        if root.is_none_or(|r| r == self.rank) {
            values.copy_from_slice(&self.shared.sums.lock().unwrap_or_else(unpoisoned)[..n]);
        }
        // Nobody writes the next collective's buffers before everyone has read these.
        self.shared.barrier.wait();
        self.shared.floats.write().unwrap_or_else(unpoisoned)[self.rank] = Vec::new();
    }
}

impl Collective for LocalGroup {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.shared.size
    }
    fn sum_f32(&self, values: &mut [f32]) {
        // In f32, as MPI_SUM on floats adds them.
        self.sum_into(values, None);
    }
    fn sum_f64(&self, values: &mut [f64]) {
        let all = self.gather(values.to_vec());
        for (i, v) in values.iter_mut().enumerate() {
            *v = all.iter().map(|r| r[i]).fold(None, |acc: Option<f64>, x| Some(acc.map_or(x, |a| a + x))).unwrap_or(0.0);
        }
    }
    fn min_max(&self, value: u64) -> (u64, u64) {
        // u64 → f64 is exact up to 2^53; agreement checks compare small counts and steps.
        let all = self.gather(vec![value as f64]);
        let v = all.iter().map(|r| r[0] as u64);
        (v.clone().min().unwrap_or(value), v.max().unwrap_or(value))
    }
    fn reduce_f32(&self, values: &mut [f32], root: usize) {
        self.sum_into(values, Some(root));
    }
    fn broadcast_f32(&self, values: &mut [f32], root: usize) {
        if self.rank == root {
            self.shared.floats.write().unwrap_or_else(unpoisoned)[root] = values.to_vec();
        }
        self.shared.barrier.wait();
        if self.rank != root {
            let all = self.shared.floats.read().unwrap_or_else(unpoisoned);
            assert_eq!(all[root].len(), values.len(), "LocalGroup: a broadcast into a buffer of another length than the root's");
            values.copy_from_slice(&all[root]);
        }
        self.shared.barrier.wait();
        if self.rank == root {
            self.shared.floats.write().unwrap_or_else(unpoisoned)[root] = Vec::new();
        }
    }
    fn gather_bytes(&self, bytes: &[u8], root: usize) -> Option<Vec<Vec<u8>>> {
        self.shared.byte_slots.lock().unwrap_or_else(|e| e.into_inner())[self.rank] = bytes.to_vec();
        self.shared.barrier.wait();
        let fresh = || vec![Vec::new(); self.shared.size];
        let all = (self.rank == root).then(|| std::mem::replace(&mut *self.shared.byte_slots.lock().unwrap_or_else(|e| e.into_inner()), fresh()));
        // Nobody writes the next gather's bytes before the root has taken these.
        self.shared.barrier.wait();
        all
    }
    fn barrier(&self) {
        self.shared.barrier.wait();
    }
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
    fn describe(&self) -> String {
        format!("rank {} of {} (threads)", self.rank, self.shared.size)
    }
}

/// A lock's value after another thread panicked holding it: the buffers stay usable.
fn unpoisoned<T>(e: std::sync::PoisonError<T>) -> T {
    e.into_inner()
}

static WORLD: RwLock<Option<Arc<dyn Collective>>> = RwLock::new(None);

/// The collective [`install`]ed for this process, else [`Single`].
pub fn world() -> Arc<dyn Collective> {
    WORLD.read().unwrap_or_else(|e| e.into_inner()).clone().unwrap_or_else(|| Arc::new(Single))
}

/// Makes `world` the process's collective until the returned guard drops (then [`world`] is
/// [`Single`] again, and an MPI world, once its last handle goes, finalizes MPI). Keep the guard
/// for as long as training runs, and drop it before the process exits, on the thread that
/// called [`from_launcher`] (MPI finalizes on the thread that initialized it): MPI launchers
/// treat a process that exits without finalizing as failed.
///
/// With several ranks, a panic on any thread of this process ends the whole job (after the
/// panic's message): unwinding would finalize MPI, which waits for the other ranks, while they
/// wait for this one in the next collective.
#[must_use = "the world is uninstalled (and MPI finalized) when the guard drops"]
pub fn install(world: Arc<dyn Collective>) -> Installed {
    *WORLD.write().unwrap_or_else(|e| e.into_inner()) = Some(world.clone());
    if world.size() > 1 {
        let previous = std::panic::take_hook();
        // Weak: the hook outlives the guard, and must not keep MPI from finalizing.
        let on_panic = Arc::downgrade(&world);
        std::panic::set_hook(Box::new(move |info| {
            previous(info);
            if let Some(world) = on_panic.upgrade() {
                world.abort(101);
            }
        }));
    }
    Installed { world }
}

/// The guard of an [`install`]ed world.
pub struct Installed {
    world: Arc<dyn Collective>,
}

impl Installed {
    pub fn world(&self) -> &Arc<dyn Collective> {
        &self.world
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        *WORLD.write().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// Where a launcher says this process stands: `(rank, size, local rank)`, from Open MPI's
/// `OMPI_COMM_WORLD_*`, PMI's `PMI_RANK`/`PMI_SIZE` (MPICH's hydra, Intel MPI), or a Slurm job
/// step's `SLURM_PROCID`/`SLURM_STEP_NUM_TASKS` (what `srun` sets; a batch script's own
/// process, which `srun` did not start, has no step task count and is not taken for rank 0 of
/// the job's tasks). `None` when no launcher started the process.
pub fn launcher_env() -> Option<(usize, usize, usize)> {
    let get = |k: &str| std::env::var(k).ok().and_then(|v| v.trim().parse::<usize>().ok());
    let local = |fallback: usize| get("OMPI_COMM_WORLD_LOCAL_RANK").or(get("MPI_LOCALRANKID")).or(get("SLURM_LOCALID")).unwrap_or(fallback);
    if let (Some(r), Some(n)) = (get("OMPI_COMM_WORLD_RANK"), get("OMPI_COMM_WORLD_SIZE")) {
        return Some((r, n, local(r)));
    }
    if let (Some(r), Some(n)) = (get("PMI_RANK"), get("PMI_SIZE")) {
        return Some((r, n, local(r)));
    }
    if let (Some(r), Some(n)) = (get("SLURM_PROCID").or(get("PMIX_RANK")), get("SLURM_STEP_NUM_TASKS")) {
        return Some((r, n, local(r)));
    }
    None
}

/// The world a launcher started this process in: `None` when there is no launcher or it started
/// one process (today's single-process run, no MPI needed); with the `mpi` feature, MPI
/// initialized and checked against what the launcher says. An error where a launcher started
/// several processes and they cannot work together (this build has no `mpi` feature, or MPI
/// sees another world than the launcher's: each would train alone into the same folder).
pub fn from_launcher() -> Result<Option<Arc<dyn Collective>>> {
    let Some((rank, size, _)) = launcher_env() else { return Ok(None) };
    if size <= 1 {
        return Ok(None);
    }
    #[cfg(feature = "mpi")]
    {
        let mpi = Mpi::init()?;
        if mpi.size() != size || mpi.rank() != rank {
            return Err(TrainError::Distributed(format!(
                "the launcher started this process as rank {rank} of {size}, but MPI sees rank {} of {}: \
                 the launcher and the MPI library do not match (under Slurm, `srun --mpi=pmix`; or launch with \
                 the mpirun of the MPI this program was built against)",
                mpi.rank(),
                mpi.size()
            )));
        }
        Ok(Some(Arc::new(mpi)))
    }
    #[cfg(not(feature = "mpi"))]
    Err(TrainError::Distributed(format!(
        "a launcher started this process as rank {rank} of {size}, but this build has no distributed \
         training (phi-train's `mpi` feature): each process would train alone into the same folder. \
         Build with the `mpi` feature, or run one process"
    )))
}

/// Which of a step's micro-batches a rank takes: `i % size == rank` (rank r takes r, r+N, …), so
/// the same config trains the same micro-batches in every optimizer step whatever N is.
pub fn takes(micro_batch: usize, rank: usize, size: usize) -> bool {
    micro_batch % size == rank
}

/// Floats per reduction call: 64 MiB of f32, so the staging buffer stays small beside the model
/// and each `MPI_Allreduce` is large enough to run at the network's bandwidth.
pub(crate) const BUCKET: usize = 1 << 24;

/// Sums every gradient of `module` across the ranks of `world`, in place, staged through host
/// memory in buckets of at most [`BUCKET`] floats (a parameter larger than that is its own
/// bucket). The parameters are visited in the module's order, the same on every rank; a rank
/// whose gradients do not match the others' in count is an error (before any reduction).
pub fn all_reduce_grads<M: Module>(module: &M, grads: &mut GradientsParams, world: &dyn Collective) -> Result<()> {
    if world.size() == 1 {
        return Ok(());
    }
    let found = present_grads(module, grads, world)?;
    for range in buckets(&found, |_| 0) {
        let (mut bucket, taken) = take_grads(module, grads, &found[range]);
        world.sum_f32(&mut bucket);
        put_back_grads(grads, &bucket, taken);
    }
    Ok(())
}

/// The parameters of `module` that have a gradient in `grads`, in visiting order (the same on
/// every rank), with their sizes; an error when another rank's differ in count or size.
pub(crate) fn present_grads<M: Module>(module: &M, grads: &GradientsParams, world: &dyn Collective) -> Result<Vec<(ParamId, usize)>> {
    let mut ids = Ids { grads, found: Vec::new() };
    module.visit(&mut ids);
    let found = ids.found;
    let elements: u64 = found.iter().map(|(_, n)| *n as u64).sum();
    let (lo, hi) = world.min_max(elements.wrapping_mul(1 << 20).wrapping_add(found.len() as u64));
    if lo != hi {
        return Err(TrainError::Distributed(format!(
            "{}: this rank has {} gradients of {elements} values, another rank has others; every rank must train the same parameters",
            world.describe(),
            found.len()
        )));
    }
    Ok(found)
}

/// `params` cut into runs of at most [`BUCKET`] values (a larger parameter is its own) that
/// never span two values of `group` (ZeRO-1: the owner rank).
pub(crate) fn buckets(params: &[(ParamId, usize)], group: impl Fn(ParamId) -> usize) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < params.len() {
        let (mut end, mut n) = (start, 0);
        while end < params.len() && (end == start || (n + params[end].1 <= BUCKET && group(params[end].0) == group(params[start].0))) {
            n += params[end].1;
            end += 1;
        }
        out.push(start..end);
        start = end;
    }
    out
}

/// A gradient taken out of [`GradientsParams`]: its parameter, shape, device and rank.
pub(crate) type Taken = (ParamId, (Vec<usize>, burn::tensor::Device, usize));

/// Moves the gradients of `ids` out of `grads` into one host f32 buffer, in visiting order.
pub(crate) fn take_grads<M: Module>(module: &M, grads: &mut GradientsParams, ids: &[(ParamId, usize)]) -> (Vec<f32>, Vec<Taken>) {
    let mut bucket = Vec::with_capacity(ids.iter().map(|(_, n)| n).sum());
    let mut taken = Vec::with_capacity(ids.len());
    module.visit(&mut Take { grads, ids, bucket: &mut bucket, taken: &mut taken });
    (bucket, taken)
}

/// Puts the gradients [`take_grads`] took back into `grads`, their values from `bucket`.
pub(crate) fn put_back_grads(grads: &mut GradientsParams, bucket: &[f32], taken: Vec<Taken>) {
    let mut at = 0;
    for (id, (shape, device, rank)) in taken {
        let len: usize = shape.iter().product();
        let data = TensorData::new(bucket[at..at + len].to_vec(), shape);
        at += len;
        match rank {
            1 => grads.register(id, Tensor::<1>::from_data(data, &device)),
            2 => grads.register(id, Tensor::<2>::from_data(data, &device)),
            3 => grads.register(id, Tensor::<3>::from_data(data, &device)),
            4 => grads.register(id, Tensor::<4>::from_data(data, &device)),
            r => panic!("a gradient of rank {r}: no Phi parameter has one"),
        }
    }
}

/// Checks that every rank of `world` holds the same weights in `module`, to the bit (an XXH3 of
/// every parameter's values, compared across ranks); an error naming the step where they differ.
/// A host copy of the weights on each rank: [`crate::fit()`] runs it at checkpoints only.
pub fn check_same_weights<M: Module>(module: &M, world: &dyn Collective, step: usize) -> Result<()> {
    struct Hash(xxhash_rust::xxh3::Xxh3Default);
    impl ModuleVisitor for Hash {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let data = param.val().into_data();
            self.0.update(data.as_bytes());
        }
    }
    let mut hash = Hash(xxhash_rust::xxh3::Xxh3Default::new());
    module.visit(&mut hash);
    let (lo, hi) = world.min_max(hash.0.digest());
    if lo != hi {
        return Err(TrainError::Distributed(format!(
            "{}: step {step}: the ranks' weights differ (they apply the same update to the same weights, so a rank's \
             computation went astray); no checkpoint was written at this step",
            world.describe()
        )));
    }
    Ok(())
}

/// The parameters that have a gradient, in visiting order, with their sizes.
struct Ids<'a> {
    grads: &'a GradientsParams,
    found: Vec<(ParamId, usize)>,
}

impl ModuleVisitor for Ids<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.get::<D>(param.id) {
            self.found.push((param.id, g.shape().num_elements()));
        }
    }
}

/// Moves the gradients of `ids` into `bucket` (host f32), recording how to put each back.
struct Take<'a> {
    grads: &'a mut GradientsParams,
    ids: &'a [(ParamId, usize)],
    bucket: &'a mut Vec<f32>,
    taken: &'a mut Vec<Taken>,
}

impl ModuleVisitor for Take<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if !self.ids.iter().any(|(id, _)| *id == param.id) {
            return;
        }
        if let Some(g) = self.grads.remove::<D>(param.id) {
            let device = g.device();
            let shape = g.dims().to_vec();
            let values = g.into_data().convert::<f32>().try_into_vec::<f32>().expect("f32 gradients");
            self.bucket.extend_from_slice(&values);
            self.taken.push((param.id, (shape, device, D)));
        }
    }
}

#[cfg(feature = "mpi")]
pub use self::mpi_world::Mpi;

#[cfg(feature = "mpi")]
mod mpi_world {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use mpi::collective::SystemOperation;
    use mpi::topology::SimpleCommunicator;
    use mpi::traits::*;

    use super::Collective;
    use crate::error::{Result, TrainError};

    /// MPI's world communicator (`MPI_COMM_WORLD`), initialized by [`Mpi::init`] and finalized
    /// when the last handle drops.
    pub struct Mpi {
        // Field order: the communicator goes before the universe, whose drop finalizes MPI.
        comm: Mutex<SimpleCommunicator>,
        rank: usize,
        size: usize,
        /// When the collective now running started (ms since the epoch; 0: none is running),
        /// for the watchdog.
        since: Arc<AtomicU64>,
        _universe: mpi::environment::Universe,
    }

    // SAFETY: MPI is initialized with MPI_THREAD_SERIALIZED (checked in `init`): any thread may
    // call MPI as long as no two do at once, which the mutex around the communicator ensures —
    // every MPI call of this type goes through it. The universe is only dropped (MPI_Finalize).
    unsafe impl Send for Mpi {}
    unsafe impl Sync for Mpi {}

    impl Mpi {
        /// Initializes MPI (once per process). An error where it was already initialized or
        /// cannot give serialized threading.
        pub fn init() -> Result<Mpi> {
            // Multiple, so that the watchdog may call MPI_Abort while the main thread waits in a
            // collective; Serialized is enough for the training itself.
            let (universe, threading) = mpi::initialize_with_threading(mpi::Threading::Multiple)
                .ok_or_else(|| TrainError::Distributed("MPI is already initialized in this process".into()))?;
            if !matches!(threading, mpi::Threading::Serialized | mpi::Threading::Multiple) {
                return Err(TrainError::Distributed(format!("the MPI library gives {threading:?} threading; training needs at least Serialized")));
            }
            let comm = universe.world();
            let (rank, size) = (comm.rank() as usize, comm.size() as usize);
            let since = Arc::new(AtomicU64::new(0));
            let timeout = timeout()?;
            watchdog(since.clone(), timeout, rank, size, threading == mpi::Threading::Multiple);
            Ok(Mpi { comm: Mutex::new(comm), rank, size, since, _universe: universe })
        }

        /// Runs `f` on the communicator, under the watchdog.
        fn run<T>(&self, f: impl FnOnce(&SimpleCommunicator) -> T) -> T {
            let comm = self.comm.lock().unwrap_or_else(|e| e.into_inner());
            self.since.store(now_ms().max(1), Ordering::SeqCst);
            let out = f(&comm);
            self.since.store(0, Ordering::SeqCst);
            out
        }
    }

    /// How long one collective may wait for the other ranks: `PHI_COLLECTIVE_TIMEOUT_S`, 1800 s
    /// by default (torch's default for its CPU collectives). A rank that died is MPI's launcher's
    /// to notice (it ends the job at once); this is for a rank that hangs — stopped, deadlocked,
    /// stuck on a dead file system — which no launcher notices. A step whose slowest rank is
    /// slower than that (or rank 0 writing a large checkpoint while the others wait) needs more.
    /// [`Collective::barrier`] has no limit.
    fn timeout() -> Result<Duration> {
        match std::env::var("PHI_COLLECTIVE_TIMEOUT_S") {
            Err(_) => Ok(Duration::from_secs(1800)),
            Ok(v) => match v.trim().parse::<f64>() {
                Ok(s) if s.is_finite() && s > 0.0 => Ok(Duration::from_secs_f64(s)),
                _ => Err(TrainError::Distributed(format!("PHI_COLLECTIVE_TIMEOUT_S={v:?}: expected a positive number of seconds"))),
            },
        }
    }

    /// Milliseconds on a monotonic clock (a wall-clock jump must not end a healthy job).
    fn now_ms() -> u64 {
        static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
    }

    /// A thread that ends the job when a collective has waited longer than `timeout`: a hung rank
    /// then costs the job, with a message naming this rank and the wait, never a silent hang.
    fn watchdog(since: Arc<AtomicU64>, timeout: Duration, rank: usize, size: usize, multiple: bool) {
        now_ms();
        let spawned = std::thread::Builder::new().name("phi-collective-watchdog".into()).spawn(move || {
            loop {
                std::thread::sleep(Duration::from_millis(500).min(timeout / 4));
                let at = since.load(Ordering::SeqCst);
                if at > 0 && now_ms().saturating_sub(at) > timeout.as_millis() as u64 {
                    // The library prints nothing: the event is the tool's to print (as `error: …`).
                    tracing::error!(
                        "rank {rank} of {size}: a collective operation has waited {:.0} s for the other ranks \
                         (PHI_COLLECTIVE_TIMEOUT_S): a rank hangs or died; ending the job",
                        timeout.as_secs_f64()
                    );
                    if multiple {
                        SimpleCommunicator::world().abort(3);
                    }
                    // Without MPI_THREAD_MULTIPLE no second MPI call may run beside the waiting
                    // one: SIGABRT instead, which the launcher sees and ends the job for.
                    std::process::abort();
                }
            }
        });
        // Without the thread a hang stays a hang, as with any MPI program; the run itself is fine.
        drop(spawned);
    }

    impl Collective for Mpi {
        fn rank(&self) -> usize {
            self.rank
        }
        fn size(&self) -> usize {
            self.size
        }
        fn sum_f32(&self, values: &mut [f32]) {
            let send = values.to_vec();
            self.run(|c| c.all_reduce_into(&send[..], values, SystemOperation::sum()));
        }
        fn sum_f64(&self, values: &mut [f64]) {
            let send = values.to_vec();
            self.run(|c| c.all_reduce_into(&send[..], values, SystemOperation::sum()));
        }
        fn min_max(&self, value: u64) -> (u64, u64) {
            let (mut lo, mut hi) = (0u64, 0u64);
            self.run(|c| {
                c.all_reduce_into(&value, &mut lo, SystemOperation::min());
                c.all_reduce_into(&value, &mut hi, SystemOperation::max());
            });
            (lo, hi)
        }
        fn reduce_f32(&self, values: &mut [f32], root: usize) {
            let send = values.to_vec();
            self.run(|c| {
                let at = c.process_at_rank(root as i32);
                if self.rank == root {
                    at.reduce_into_root(&send[..], values, SystemOperation::sum());
                } else {
                    at.reduce_into(&send[..], SystemOperation::sum());
                }
            });
        }
        fn broadcast_f32(&self, values: &mut [f32], root: usize) {
            self.run(|c| c.process_at_rank(root as i32).broadcast_into(values));
        }
        fn gather_bytes(&self, bytes: &[u8], root: usize) -> Option<Vec<Vec<u8>>> {
            // Point to point, in chunks: MPI counts are C ints (2 GiB at most), and a rank's
            // optimizer shard may be larger.
            const CHUNK: usize = 1 << 30;
            self.run(|c| {
                if self.rank != root {
                    let to = c.process_at_rank(root as i32);
                    to.send(&(bytes.len() as u64));
                    bytes.chunks(CHUNK).for_each(|chunk| to.send(chunk));
                    return None;
                }
                let mut all = Vec::with_capacity(self.size);
                for r in 0..self.size {
                    if r == root {
                        all.push(bytes.to_vec());
                        continue;
                    }
                    let from = c.process_at_rank(r as i32);
                    let mut len = 0u64;
                    from.receive_into(&mut len);
                    let mut buf = vec![0u8; len as usize];
                    buf.chunks_mut(CHUNK).for_each(|chunk| {
                        from.receive_into(chunk);
                    });
                    all.push(buf);
                }
                Some(all)
            })
        }
        fn barrier(&self) {
            // Not under the watchdog (see the trait).
            self.comm.lock().unwrap_or_else(|e| e.into_inner()).barrier();
        }
        fn abort(&self, code: i32) -> ! {
            // Not through the mutex: the thread that holds it may be the one waiting forever.
            mpi::topology::SimpleCommunicator::world().abort(code)
        }
        fn describe(&self) -> String {
            format!("rank {} of {} (MPI)", self.rank, self.size)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;
    use phi_core::{PhiConfig, PhiForCausalLM};

    #[test]
    fn ranks_whose_weights_differ_are_caught_and_the_same_weights_pass() {
        let config = PhiConfig::phi_family(32, 1, 4, 64, 0.5);
        let outcomes: Vec<[bool; 2]> = std::thread::scope(|s| {
            let handles: Vec<_> = LocalGroup::new(2)
                .into_iter()
                .map(|world| {
                    let config = config.clone();
                    s.spawn(move || {
                        let device = Device::default();
                        let same = PhiForCausalLM::init(config.clone(), &device, 3).unwrap();
                        let own = PhiForCausalLM::init(config, &device, 3 + world.rank() as u64).unwrap();
                        [check_same_weights(&same, &*world, 5).is_ok(), check_same_weights(&own, &*world, 5).is_ok()]
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(outcomes, [[true, false], [true, false]]);
    }
}
