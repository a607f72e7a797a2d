"""The other libraries' side of a side-by-side benchmark (run in their interpreter).

It imports only torch, numpy, byzfl and byzpy (never byzsgd: that interpreter need not have
it) and answers one JSON request per line on stdin with one JSON line on stdout:

* start-up: it prints ``{"torch", "threads", "byzfl", "byzpy", "errors"}`` (versions, or null
  where a library does not import);
* ``{"cmd": "load", "path", "f"}``: the (n, d) float32 matrix saved by the caller (.npy);
* ``{"cmd": "time", "op"}``: the ms of one call of ``op`` (``"byzfl:median"``, ...) on it,
  whatever it needs prepared (a clone, a list of rows) made before the clock starts;
  ``{"ms": null, "error": ...}`` when the library lacks it or it fails;
* ``{"cmd": "rounds_setup", ...}`` and ``{"cmd": "rounds", "k"}``: ByzFL's own training loop
  (:func:`rounds_setup`), ``k`` more rounds, answering their times in ms.

    python _foreign_worker.py THREADS
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch

BYZFL_GATHER_BYTES = 2 * 2**30  # ByzFL's NNM gathers (n, n - f, d): refuse it beyond this


def _import(name):
    try:
        module = __import__(name)
        # byzpy imports its subpackages lazily; the ones used here must import
        if name == "byzpy":
            import byzpy.aggregators.coordinate_wise
            import byzpy.aggregators.geometric_wise
            import byzpy.aggregators.norm_wise
            import byzpy.attacks
            import byzpy.pre_aggregators  # noqa: F401
        return module, None
    except Exception as error:  # partially installed: report, carry on
        return None, f"{name}: {error!r}"


def byzfl_ops(byzfl, x, f):
    """ByzFL's implementation of each operation: name -> (prepare, call(prepared))."""
    n, d = x.shape
    small = x[:, : max(1, d // 10)].contiguous()
    honest = x[: n - f]

    def same():
        return x

    def chain(*stages):
        def call(v):
            for stage in stages:
                v = stage(v)
            return v
        return call

    ops = {
        "mean": (same, byzfl.Average()),
        "median": (same, byzfl.Median()),
        "median numpy": (lambda: x.numpy(), byzfl.Median()),
        "trimmed-mean": (same, byzfl.TrMean(f=f)),
        "trimmed-mean numpy": (lambda: x.numpy(), byzfl.TrMean(f=f)),
        "meamed": (same, byzfl.Meamed(f=f)),
        "krum": (same, byzfl.Krum(f=f)),
        "multi-krum": (same, byzfl.MultiKrum(f=f)),
        "geomed": (same, byzfl.GeometricMedian(nu=0.1, T=3)),
        "rfa": (same, byzfl.GeometricMedian(nu=0.1, T=3)),
        "centered-clipping": (same, byzfl.CenteredClipping(tau=100.0)),
        "nnm d/10": (lambda: small, byzfl.NNM(f=f)),
        "bucketing": (same, byzfl.Bucketing(s=2)),
        "clipping": (lambda: x.clone(), byzfl.Clipping(c=1.0)),
        "arc": (lambda: x.clone(), byzfl.ARC(f=f)),
        "nnm d/10+krum": (lambda: small, chain(byzfl.NNM(f=f), byzfl.Krum(f=f))),
        "bucketing+median": (same, chain(byzfl.Bucketing(s=2), byzfl.Median())),
        # clipping chains: on a copy made before the clock, as its pre-aggregators clip in place
        "clipping+mean": (lambda: x.clone(), chain(byzfl.Clipping(c=1.0), byzfl.Average())),
        "arc+median": (lambda: x.clone(), chain(byzfl.ARC(f=f), byzfl.Median())),
        "arc+krum": (lambda: x.clone(), chain(byzfl.ARC(f=f), byzfl.Krum(f=f))),
        # attacks: on the honest rows (the first n - f)
        "alie": (lambda: honest, byzfl.ALittleIsEnough(tau=1.5)),
        "ipm": (lambda: honest, byzfl.InnerProductManipulation(tau=0.1)),
        "mimic": (lambda: honest, byzfl.Mimic(epsilon=0)),
        "sign-flip": (lambda: honest, byzfl.SignFlipping()),
        "gaussian": (lambda: honest, byzfl.Gaussian(mu=0.0, sigma=200.0)),
        "optimal-alie": (lambda: honest, byzfl.Optimal_ALittleIsEnough(
            agg=byzfl.Median(), pre_agg_list=[], f=f)),
        "optimal-alie krum": (lambda: honest, byzfl.Optimal_ALittleIsEnough(
            agg=byzfl.Krum(f=f), pre_agg_list=[], f=f)),
        "optimal-ipm": (lambda: honest, byzfl.Optimal_InnerProductManipulation(
            agg=byzfl.Median(), pre_agg_list=[], f=f)),
    }
    if n * (n - f) * d * 4 <= BYZFL_GATHER_BYTES:
        ops["nnm"] = (same, byzfl.NNM(f=f))
        ops["nnm+krum"] = (same, chain(byzfl.NNM(f=f), byzfl.Krum(f=f)))
    return ops


def byzpy_ops(byzpy, x, f):
    """byzpy's implementation of each operation (it takes a list of per-worker vectors)."""
    from byzpy import attacks as at
    from byzpy import pre_aggregators as pre
    from byzpy.aggregators import coordinate_wise as cw
    from byzpy.aggregators import geometric_wise as gw
    from byzpy.aggregators import norm_wise as nw

    n, d = x.shape
    rows = list(x)
    small_rows = list(x[:, : max(1, d // 10)].contiguous())
    honest = rows[: n - f]

    def same():
        return rows

    def agg(rule):
        return rule.aggregate

    def attack(a):
        return lambda grads: a.apply(honest_grads=grads)

    return {
        "median": (same, agg(cw.CoordinateWiseMedian())),
        "trimmed-mean": (same, agg(cw.CoordinateWiseTrimmedMean(f=f))),
        "meamed": (same, agg(cw.MeanOfMedians(f=f))),
        "krum": (same, agg(gw.Krum(f=f))),
        "multi-krum": (same, agg(gw.MultiKrum(f=f, q=n - f))),
        "geomed": (same, agg(gw.GeometricMedian())),
        "rfa": (same, agg(gw.GeometricMedian(max_iter=3))),
        "centered-clipping": (same, agg(nw.CenteredClipping(c_tau=100.0, M=1))),
        "nnm": (same, pre.NearestNeighborMixing(f=f).pre_aggregate),
        "nnm d/10": (lambda: small_rows, pre.NearestNeighborMixing(f=f).pre_aggregate),
        "bucketing": (same, pre.Bucketing(bucket_size=2).pre_aggregate),
        "clipping": (same, pre.Clipping(threshold=1.0).pre_aggregate),
        "arc": (same, pre.ARC(f=f).pre_aggregate),
        "alie": (lambda: honest, attack(at.LittleAttack(f=f))),
        "ipm": (lambda: honest, attack(at.EmpireAttack(scale=-0.1))),
        "mimic": (lambda: honest, attack(at.MimicAttack(epsilon=0))),
        "sign-flip": (lambda: honest, lambda grads: at.SignFlipAttack().apply(
            base_grad=grads[0])),
        "gaussian": (lambda: honest, attack(at.GaussianAttack(sigma=200.0, seed=0))),
    }


class Rounds:
    """ByzFL's training loop as its documentation writes it: honest clients (fc_mnist, its
    worker momentum), one ByzantineClient forging f vectors, a Server with the robust
    aggregator; evaluation excluded."""

    def __init__(self, byzfl, req):
        from torch.utils.data import DataLoader, TensorDataset

        data = np.load(req["data"])
        images = torch.from_numpy(data["images"])
        labels = torch.from_numpy(data["labels"]).long()
        n, f, batch = req["workers"], req["byzantine"], req["batch"]
        torch.manual_seed(req.get("seed", 1))
        rule = {"median": ("Median", {}), "krum": ("Krum", {"f": f}),
                "trimmed-mean": ("TrMean", {"f": f}), "meamed": ("Meamed", {"f": f}),
                "multi-krum": ("MultiKrum", {"f": f})}[req["rule"]]
        info = {"name": rule[0], "parameters": rule[1]}
        test = DataLoader(TensorDataset(images[:batch], labels[:batch]), batch_size=batch)
        self.server = byzfl.Server({
            "device": "cpu", "model_name": "fc_mnist", "test_loader": test,
            "optimizer_name": "SGD", "optimizer_params": {}, "learning_rate": req["lr"],
            "weight_decay": req["weight_decay"], "milestones": [], "learning_rate_decay": 1.0,
            "aggregator_info": info, "pre_agg_list": []})
        honest = n - f
        shard = len(images) // n
        self.clients = []
        for i in range(honest):
            part = TensorDataset(images[i * shard:(i + 1) * shard],
                                 labels[i * shard:(i + 1) * shard])
            self.clients.append(byzfl.Client({
                "model_name": "fc_mnist", "device": "cpu", "loss_name": "NLLLoss",
                "LabelFlipping": False, "nb_labels": 10, "momentum": req["momentum"],
                "training_dataloader": DataLoader(part, batch_size=batch, shuffle=True),
                "store_per_client_metrics": False, "optimizer_name": None,
                "learning_rate": None, "weight_decay": None, "milestones": None,
                "learning_rate_decay": None}))
        self.byzantine = byzfl.ByzantineClient({
            "f": f, "name": "ALittleIsEnough", "parameters": {"tau": req["z"]}})

    def round(self):
        state = self.server.get_dict_parameters()
        for client in self.clients:
            client.set_model_state(state)
        for client in self.clients:
            client.compute_gradients()
        honest = [client.get_flat_gradients_with_momentum() for client in self.clients]
        self.server.update_model_with_gradients(honest + self.byzantine.apply_attack(honest))


def main() -> None:
    torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else torch.get_num_threads())
    byzfl, byzfl_error = _import("byzfl")
    byzpy, byzpy_error = _import("byzpy")
    hello = {"torch": torch.__version__, "threads": torch.get_num_threads(),
             "byzfl": getattr(byzfl, "__version__", "0.0.11" if byzfl else None)
             if byzfl else None,
             "byzpy": getattr(byzpy, "__version__", "?") if byzpy else None,
             "errors": [e for e in (byzfl_error, byzpy_error) if e]}
    if byzfl:  # ByzFL 0.0.11 has no __version__; ask its metadata
        try:
            from importlib.metadata import version

            hello["byzfl"] = version("byzfl")
            if byzpy:
                hello["byzpy"] = version("byzpy")
        except Exception:
            pass
    print(json.dumps(hello), flush=True)
    ops, rounds = {}, None
    for line in sys.stdin:
        req = json.loads(line)
        try:
            if req["cmd"] == "load":
                x = torch.from_numpy(np.load(req["path"]))
                ops = {}
                if byzfl:
                    ops.update({"byzfl:" + k: v for k, v in byzfl_ops(byzfl, x, req["f"]).items()})
                if byzpy:
                    ops.update({"byzpy:" + k: v for k, v in byzpy_ops(byzpy, x, req["f"]).items()})
                reply = {"ops": sorted(ops)}
            elif req["cmd"] == "time":
                if req["op"] not in ops:
                    reply = {"ms": None, "error": f"{req['op']} not offered"}
                else:
                    prepare, call = ops[req["op"]]
                    arg = prepare()
                    start = time.perf_counter()
                    call(arg)
                    reply = {"ms": (time.perf_counter() - start) * 1e3}
            elif req["cmd"] == "rounds_setup":
                rounds = Rounds(byzfl, req)
                reply = {"ok": True}
            elif req["cmd"] == "rounds":
                times = []
                for _ in range(req["k"]):
                    start = time.perf_counter()
                    rounds.round()
                    times.append((time.perf_counter() - start) * 1e3)
                reply = {"times": times}
            else:
                reply = {"error": f"unknown command {req['cmd']!r}"}
        except Exception as error:  # report, keep serving
            reply = {"ms": None, "error": repr(error)[:300]}
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()
