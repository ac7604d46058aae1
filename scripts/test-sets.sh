# Sourced by scripts/test and scripts/make-lavapipe-autotune: what they build and run.

# The package set and features of every cargo call, so that none rebuilds anything.
build=(--release --workspace --features phi/wgpu,phi/cuda,phi/mpi)

# The wgpu step: the files (modules) named, of phi-core's and phi-train's integration binaries.
# The skipped tests check file handling (checkpoint pruning, a foreign metrics.jsonl, a user's
# file in an old checkpoint, a resume mismatch message, the run lock, checkpoint checksums) and
# LoRA's freezing, none of which depends on the backend; the CPU step runs them.
wgpu_tests=(
    --test integration -- model_parity:: train_parity:: lora:: train_resume::
    --skip a_kill_mid_prune --skip pruning_retires --skip a_metrics_jsonl_that_is_not_ours
    --skip resuming_another_run_is_an_error --skip training_moves_only_the_adapters
    --skip a_second_run_on_a_held_output_folder
    --skip resume_passes_over_altered_incomplete_and_non_finite_checkpoints
    --skip an_old_checkpoint_that_is_not_ours_to_prune
)
