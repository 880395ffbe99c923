"""ONNX Runtime peer (the onnxruntime Python package, CPU execution provider):
the ONNX exports of bench/peer_models.py, intra_op_num_threads=T,
inter_op_num_threads=1, sequential execution, all graph optimizations.
Prints one `peer:` line like bench/peer_diffusers.py.

    .venv-ref/bin/python bench/peer_ort.py --workload unet|vae --threads T [--runs R] [--check]
"""
import sys

import peer_models as pm


def main():
    a = pm.peer_args("ONNX Runtime (CPU EP) peer")
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(pm.onnx_path(a.cache, a.workload), sess_options=so,
                                providers=["CPUExecutionProvider"])
    if a.workload == "unet":
        s, t, c = pm.unet_inputs(a.batch)

        def fwd(s, t, c):
            return sess.run(None, {"sample": s, "timestep": t, "encoder_hidden_states": c})[0]

        median, mn = pm.time_runs(lambda: fwd(s, t, c), a.runs, a.warmup)
        rss = pm.peak_rss_mb()
        rel = None
        if a.check:
            gs, gt, gc, ref = pm.unet_golden()
            rel = pm.rel_l2(fwd(gs, gt, gc), ref)
    else:
        z = pm.vae_latent(a.batch)

        def fwd(z):
            return sess.run(None, {"latent": z})[0]

        median, mn = pm.time_runs(lambda: fwd(z), a.runs, a.warmup)
        rss = pm.peak_rss_mb()
        rel = None
        if a.check:
            gz, ref = pm.vae_golden()
            rel = pm.rel_l2(fwd(gz), ref)
    pm.report("ort", ort.__version__, a, median, mn, rss, rel)


if __name__ == "__main__":
    sys.exit(main())
