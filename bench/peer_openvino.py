"""OpenVINO peer (the openvino Python package, CPU plugin): reads the ONNX
exports of bench/peer_models.py, fixes the input shapes, and compiles with
INFERENCE_NUM_THREADS=T, PERFORMANCE_HINT=LATENCY and
INFERENCE_PRECISION_HINT=f32 (on CPUs with bf16 support OpenVINO would
otherwise be free to run in bf16). The compiled model's precision is read
back and printed. Prints one `peer:` line like bench/peer_diffusers.py.

    .venv-ref/bin/python bench/peer_openvino.py --workload unet|vae --threads T [--runs R] [--check]
"""
import sys

import peer_models as pm


def main():
    a = pm.peer_args("OpenVINO (CPU plugin) peer")
    import openvino as ov

    core = ov.Core()
    cfg = {"INFERENCE_NUM_THREADS": a.threads, "PERFORMANCE_HINT": "LATENCY",
           "INFERENCE_PRECISION_HINT": "f32"}
    path = pm.onnx_path(a.cache, a.workload)

    def compile_for(shapes):
        m = core.read_model(path)
        m.reshape(shapes)
        cm = core.compile_model(m, "CPU", cfg)
        return cm, cm.create_infer_request()

    if a.workload == "unet":
        s, t, c = pm.unet_inputs(a.batch)
        cm, req = compile_for({"sample": list(s.shape), "timestep": list(t.shape),
                               "encoder_hidden_states": list(c.shape)})

        def fwd(req, s, t, c):
            req.infer({"sample": s, "timestep": t, "encoder_hidden_states": c})
            return req.get_output_tensor(0).data.copy()

        median, mn = pm.time_runs(lambda: fwd(req, s, t, c), a.runs, a.warmup)
        rss = pm.peak_rss_mb()
        rel = None
        if a.check:  # same shapes as the timed batch-1 input
            gs, gt, gc, ref = pm.unet_golden()
            if a.batch != 1:
                cm, req = compile_for({"sample": list(gs.shape), "timestep": list(gt.shape),
                                       "encoder_hidden_states": list(gc.shape)})
            rel = pm.rel_l2(fwd(req, gs, gt, gc), ref)
    else:
        z = pm.vae_latent(a.batch)
        cm, req = compile_for({"latent": list(z.shape)})

        def fwd(req, z):
            req.infer({"latent": z})
            return req.get_output_tensor(0).data.copy()

        median, mn = pm.time_runs(lambda: fwd(req, z), a.runs, a.warmup)
        rss = pm.peak_rss_mb()
        rel = None
        if a.check:
            gz, ref = pm.vae_golden()
            del req, cm
            cm, req = compile_for({"latent": list(gz.shape)})
            rel = pm.rel_l2(fwd(req, gz), ref)
    prec = cm.get_property("INFERENCE_PRECISION_HINT")
    prec = prec.to_string() if hasattr(prec, "to_string") else str(prec)
    nthr = cm.get_property("INFERENCE_NUM_THREADS")
    pm.report("openvino", ov.__version__.split("-")[0], a, median, mn, rss, rel,
              " precision=%s ov_threads=%s" % (prec, nthr))


if __name__ == "__main__":
    sys.exit(main())
