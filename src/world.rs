//! The commands in a data-parallel run ([`phi_train::dist`]): every process a launcher started
//! runs the same command, and [`phi_train::fit()`] shares each step among them. Around the
//! training, rank 0 alone does what writes — it prepares the data the others then reuse
//! ([`lead_first`]), holds the output folder, draws the loss curve and writes the model folders
//! at the end — and the `phi` tool prints only rank 0's output, and every rank's errors.

/// The device of `backend` this process trains on: GPU `local rank` of its machine in a
/// data-parallel run (one process per GPU, as launchers start them), else the first.
pub fn device(backend: phi_core::device::Backend) -> Result<burn::tensor::Device, String> {
    let local = match phi_train::dist::world().size() {
        1 => 0,
        _ => phi_train::dist::launcher_env().map_or(0, |(_, _, local)| local),
    };
    // A launcher that gives each process its own GPUs (Slurm's --gpus-per-task, a wrapper
    // setting CUDA_VISIBLE_DEVICES per rank) leaves fewer visible than local ranks.
    let visible = std::env::var("CUDA_VISIBLE_DEVICES").ok().map(|v| v.split(',').filter(|d| !d.trim().is_empty()).count()).filter(|&n| n > 0);
    backend.device_at(visible.map_or(local, |n| local % n))
}

/// Whether this process is rank 0 of the run (or the only process): the one that writes.
pub fn lead() -> bool {
    phi_train::dist::world().rank() == 0
}

/// Runs `f` on rank 0 first and then, once it is done, on the other ranks: for work that writes
/// what the others then only read (data prepared once, reused by the rest). One process: `f`.
/// Should rank 0 fail, it returns its error without waiting; the tool then ends the whole job.
pub fn lead_first<T, E>(f: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
    let world = phi_train::dist::world();
    if world.size() == 1 {
        return f();
    }
    if world.rank() == 0 {
        let out = f()?;
        world.barrier();
        Ok(out)
    } else {
        world.barrier();
        f()
    }
}
