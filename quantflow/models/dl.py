"""``kind: dl``: PyTorch networks (an MLP, an LSTM or a temporal convolution over the last ``window`` bars).

Per fit: standardization from the training rows only (NaN after it: 0, the training mean); early stopping
on a validation split taken from the end of the training period (purged: training rows whose labels reach
it are left out); seeds fixed (torch, numpy) and deterministic kernels; ``device: auto`` picks CUDA when
present. Progress: each epoch's losses as a detail line (the run log's debug level in Dagster, `qf -v`); the refits
advance the stage's progress.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from quantflow.models.dataset import TrainingSet
from quantflow.models.engine import Learner, Predicted


def _device(choice: str):
    import torch

    if choice == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: cuda was asked for, but torch sees no CUDA device")
    return torch.device("cuda" if choice in ("cuda", "auto") and torch.cuda.is_available() else "cpu")


def build_network(network: str, n_features: int, n_out: int, p: dict[str, Any]):
    import torch
    from torch import nn

    hidden, layers, dropout = int(p["hidden"]), int(p["layers"]), float(p["dropout"])

    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            blocks, width = [], n_features
            for _ in range(layers):
                blocks += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout)]
                width = hidden
            self.body = nn.Sequential(*blocks)
            self.head = nn.Linear(width, n_out)

        def forward(self, x):  # (batch, features)
            return self.head(self.body(x))

    class LSTM(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.LSTM(n_features, hidden, num_layers=layers, batch_first=True,
                               dropout=dropout if layers > 1 else 0.0)
            self.head = nn.Linear(hidden, n_out)

        def forward(self, x):  # (batch, window, features)
            out, _ = self.rnn(x)
            return self.head(out[:, -1])

    class TCN(nn.Module):
        """Causal dilated 1-d convolutions (dilation 1, 2, 4, ...): each output sees only earlier bars."""

        def __init__(self):
            super().__init__()
            k = int(p["kernel_size"])
            self.pads, convs, width = [], [], n_features
            for i in range(max(layers, 1)):
                dilation = 2**i
                self.pads.append((k - 1) * dilation)
                convs.append(nn.Conv1d(width, hidden, k, dilation=dilation))
                width = hidden
            self.convs = nn.ModuleList(convs)
            self.drop = nn.Dropout(dropout)
            self.head = nn.Linear(hidden, n_out)

        def forward(self, x):  # (batch, window, features)
            h = x.transpose(1, 2)
            for pad, conv in zip(self.pads, self.convs):
                h = self.drop(torch.relu(conv(nn.functional.pad(h, (pad, 0)))))
            return self.head(h[:, :, -1])

    return {"mlp": MLP, "lstm": LSTM, "tcn": TCN}[network]()


class TorchLearner(Learner):
    kind = "dl"
    artifact_prefix = "nn_engine_"
    extension = "pt"

    def _inputs(self, data: TrainingSet, rows: np.ndarray, mean: np.ndarray, std: np.ndarray, window: int):
        x = data.X[rows] if self.cfg.network == "mlp" else data.sequences(rows, window)
        x = (x - mean) / std
        return np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)

    def fit(self, data: TrainingSet, rows: np.ndarray, weights: np.ndarray, params: dict[str, Any],
            label: str = "") -> Any:
        import torch

        p = self.cfg.dl_params(params)
        torch.manual_seed(self.cfg.seed)
        torch.use_deterministic_algorithms(True, warn_only=True)
        rng = np.random.default_rng(self.cfg.seed)
        device = _device(self.cfg.device)
        x_train = data.X[rows]
        mean = np.nanmean(x_train, axis=0) if rows.size else np.zeros(len(data.features))
        std = np.nanstd(x_train, axis=0) if rows.size else np.ones(len(data.features))
        mean, std = np.nan_to_num(mean), np.where(np.nan_to_num(std) > 0, np.nan_to_num(std), 1.0)
        fit_rows, val_rows = self._validation_split(data, rows, float(p["validation_share"]))
        classification = self.cfg.task == "classification"
        y = data.y
        if classification:
            targets = np.searchsorted(self.classes, y.astype(np.int64))
            y_center, y_scale = 0.0, 1.0
        else:
            y_center = float(np.mean(y[rows]))
            y_scale = float(np.std(y[rows])) or 1.0
            targets = (y - y_center) / y_scale
        n_out = self.classes.size if classification else 1
        net = build_network(self.cfg.network, len(data.features), n_out, p).to(device)
        optimizer = torch.optim.Adam(net.parameters(), lr=float(p["lr"]), weight_decay=float(p["weight_decay"]))
        w = weights / weights.mean() if weights.size and weights.mean() > 0 else np.ones(rows.size)

        def tensors(subset):
            x = torch.from_numpy(self._inputs(data, subset, mean, std, int(p["window"]))).to(device)
            t = torch.from_numpy(targets[subset]).to(device)
            t = t.long() if classification else t.float()
            sw = torch.from_numpy(w[np.searchsorted(rows, subset)].astype(np.float32)).to(device)  # rows: sorted
            return x, t, sw

        def loss_of(out, t, sw):
            if classification:
                per = torch.nn.functional.cross_entropy(out, t, reduction="none")
            else:
                per = (out.squeeze(-1) - t) ** 2
            return (per * sw).sum() / sw.sum()

        x_fit, t_fit, w_fit = tensors(fit_rows)
        x_val, t_val, w_val = tensors(val_rows) if val_rows.size else (None, None, None)
        best, best_state, stale = np.inf, None, 0
        epochs, batch = int(p["epochs"]), int(p["batch_size"])
        for epoch in range(epochs):
            net.train()
            order = rng.permutation(fit_rows.size)
            total = 0.0
            for start in range(0, order.size, batch):
                idx = torch.from_numpy(order[start:start + batch]).to(device)
                optimizer.zero_grad()
                loss = loss_of(net(x_fit[idx]), t_fit[idx], w_fit[idx])
                loss.backward()
                optimizer.step()
                total += loss.item() * idx.numel()
            train_loss = total / max(order.size, 1)
            net.eval()
            with torch.no_grad():
                val_loss = float(loss_of(net(x_val), t_val, w_val)) if x_val is not None else train_loss
            self.progress.detail(f"{self.cfg.name} {label}: epoch {epoch + 1}/{epochs} train loss {train_loss:.5f} "
                                 f"validation loss {val_loss:.5f}")
            if val_loss < best - 1e-9:
                best, stale = val_loss, 0
                best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
            else:
                stale += 1
                if stale >= int(p["patience"]):
                    break
        if best_state is not None:
            net.load_state_dict(best_state)
        net.eval()
        return {"net": net, "mean": mean, "std": std, "params": p, "y_center": y_center, "y_scale": y_scale,
                "epochs_run": epoch + 1 if epochs else 0, "best_validation_loss": best}

    @staticmethod
    def _validation_split(data: TrainingSet, rows: np.ndarray, share: float) -> tuple[np.ndarray, np.ndarray]:
        """The last ``share`` of the training period's bars validate; earlier rows whose labels reach into
        them do not train (purged), so early stopping never peeks at the validation labels."""
        if share <= 0 or rows.size < 10:
            return rows, np.empty(0, np.int64)
        times = np.unique(data.t0[rows])
        cut = times[min(max(int(round(times.size * (1 - share))), 1), times.size - 1)]
        val = rows[data.t0[rows] >= cut]
        fit = rows[(data.t0[rows] < cut) & (data.t1[rows] < cut)]
        return (fit, val) if fit.size else (rows, np.empty(0, np.int64))

    def _forward(self, fitted: dict, data: TrainingSet, rows: np.ndarray) -> np.ndarray:
        import torch

        net = fitted["net"]
        device = next(net.parameters()).device
        x = torch.from_numpy(self._inputs(data, rows, fitted["mean"], fitted["std"], int(fitted["params"]["window"])))
        with torch.no_grad():
            return net(x.to(device)).cpu().numpy().astype(np.float64)

    def probabilities(self, fitted: Any, data: TrainingSet, rows: np.ndarray):
        if self.cfg.task != "classification":
            return None
        logits = self._forward(fitted, data, rows)
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True), self.classes

    def predict(self, fitted: Any, data: TrainingSet, rows: np.ndarray) -> Predicted:
        if self.cfg.task == "regression":
            out = self._forward(fitted, data, rows)[:, 0]
            return Predicted(rows, out * fitted["y_scale"] + fitted["y_center"])
        proba, classes = self.probabilities(fitted, data, rows)
        best = proba.argmax(axis=1)
        return Predicted(rows, proba @ classes.astype(np.float64), classes[best].astype(np.int64),
                         proba[np.arange(rows.size), best])

    def dumps(self, fitted: Any, info: dict[str, Any]) -> bytes:
        import torch

        buffer = io.BytesIO()
        torch.save({"state_dict": fitted["net"].state_dict(), "network": self.cfg.network,
                    "params": fitted["params"], "mean": fitted["mean"], "std": fitted["std"],
                    "y_center": fitted["y_center"], "y_scale": fitted["y_scale"], **info}, buffer)
        return buffer.getvalue()

    def versions(self) -> dict[str, str]:
        import torch

        return {"torch": torch.__version__, "device": str(_device(self.cfg.device))}
