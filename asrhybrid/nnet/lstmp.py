"""LSTMP: LSTM with a recurrent projection layer (Sak, Senior, Beaufays 2014), the hybrid acoustic model of stage 6.

Per layer (the paper's equations 7-12, with ``r`` the projection that feeds back)::

    i_t = sigma(W_ix x_t + W_ir r_{t-1} + w_ic * c_{t-1} + b_i)
    f_t = sigma(W_fx x_t + W_fr r_{t-1} + w_fc * c_{t-1} + b_f)
    c_t = f_t * c_{t-1} + i_t * g(W_cx x_t + W_cr r_{t-1} + b_c)      (optionally clipped to +-cell_clip)
    o_t = sigma(W_ox x_t + W_or r_{t-1} + w_oc * c_t + b_o)
    r_t = W_rm (o_t * h(c_t))

Two implementations of a layer stack:

- ``cudnn`` (the default): ``torch.nn.LSTM(proj_size=...)``, cuDNN's LSTMP on
  GPU. It has neither peepholes nor cell clipping, and is several times faster.
- ``peephole``: :class:`PeepholeLSTMP`, the equations above in torch, with
  peepholes (``w_ic, w_fc, w_oc``) and cell clipping (the paper clips at 50).

The acoustic model's output for frame ``t`` is read ``delay`` frames later
(the paper delays the targets by 5 frames, so a unidirectional model hears
a little of the future before it decides): :class:`LstmpAM` shifts its
outputs back, so callers see one output per input frame, aligned.
"""

from __future__ import annotations

import torch
from torch import nn


class PeepholeLSTMP(nn.Module):
    """Stacked LSTMP layers with peepholes and optional cell clipping: [B, T, n_i] -> [B, T, n_r]."""

    def __init__(self, input_size: int, cells: int, proj: int, layers: int = 1, cell_clip: float | None = 50.0):
        super().__init__()
        self.cells, self.proj, self.cell_clip = cells, proj, cell_clip
        self.w_x = nn.ModuleList(nn.Linear(input_size if k == 0 else proj, 4 * cells) for k in range(layers))
        self.w_r = nn.ModuleList(nn.Linear(proj, 4 * cells, bias=False) for _ in range(layers))
        self.peep = nn.ParameterList(nn.Parameter(torch.zeros(3, cells)) for _ in range(layers))  # w_ic, w_fc, w_oc
        self.w_rm = nn.ModuleList(nn.Linear(cells, proj, bias=False) for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for w_x, w_r, peep, w_rm in zip(self.w_x, self.w_r, self.peep, self.w_rm):
            B, T, _ = x.shape
            gates_x = w_x(x)  # all frames at once; only the recurrent part runs frame by frame
            c = x.new_zeros(B, self.cells)
            r = x.new_zeros(B, self.proj)
            outputs = []
            for t in range(T):
                i, f, g, o = (gates_x[:, t] + w_r(r)).chunk(4, dim=1)
                i = torch.sigmoid(i + peep[0] * c)
                f = torch.sigmoid(f + peep[1] * c)
                c = f * c + i * torch.tanh(g)
                if self.cell_clip is not None:
                    c = c.clamp(-self.cell_clip, self.cell_clip)
                o = torch.sigmoid(o + peep[2] * c)
                r = w_rm(o * torch.tanh(c))
                outputs.append(r)
            x = torch.stack(outputs, dim=1)
        return x


class LstmpAM(nn.Module):
    """Fbank frames [B, T, n_i] -> pdf logits [B, T, num_pdfs], output t aligned with input frame t.

    ``delay``: the output for frame t is computed after frame t + delay (the input
    is padded at the end with its last frame, so every utterance gets T outputs).
    ``dropout``: on each layer's projected output in training (between the layers and before the output
    layer: Zaremba 2014's non-recurrent connections; the recurrence itself is untouched).
    """

    def __init__(
        self,
        feat_dim: int,
        num_pdfs: int,
        cells: int = 320,
        proj: int = 128,
        layers: int = 2,
        delay: int = 5,
        kind: str = "cudnn",
        cell_clip: float | None = 50.0,
        bidirectional: bool = False,
        dropout: float = 0.0,
    ):
        super().__init__()
        if kind not in ("cudnn", "peephole"):
            raise ValueError(f"LSTMP kind '{kind}': cudnn or peephole")
        if bidirectional and kind != "cudnn":
            raise ValueError("a bidirectional LSTMP uses the cudnn kind")
        if not 0 <= dropout < 1 or (dropout and kind != "cudnn"):
            raise ValueError(f"dropout {dropout}: in [0, 1), with the cudnn kind")
        self.delay = delay
        if kind == "cudnn":
            self.lstm = nn.LSTM(
                feat_dim,
                cells,
                num_layers=layers,
                proj_size=proj,
                batch_first=True,
                bidirectional=bidirectional,
                dropout=dropout if layers > 1 else 0.0,
            )
        else:
            self.lstm = PeepholeLSTMP(feat_dim, cells, proj, layers, cell_clip)
        self.dropout = nn.Dropout(dropout)
        self.output = nn.Linear(proj * (2 if bidirectional else 1), num_pdfs)

    @property
    def right_context(self) -> int:
        """Frames after t that output t depends on (chunked training gives each chunk this many more)."""
        return self.delay

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        if self.delay:
            feats = torch.cat([feats, feats[:, -1:].expand(-1, self.delay, -1)], dim=1)
        hidden = self.lstm(feats)
        hidden = hidden[0] if isinstance(hidden, tuple) else hidden
        return self.output(self.dropout(hidden[:, self.delay :]))
