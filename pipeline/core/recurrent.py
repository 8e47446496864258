"""One Keras recurrent layer as the export stage hands it on: ``RecurrentSpec``.

The export stage writes each Keras ``GRU``/``LSTM``/``SimpleRNN`` (bare or in a
``Bidirectional``) as a single ONNX node ``ai.keras2torch::<kind>`` whose ``keras``
attribute is this spec as JSON, whose inputs are the sequence, the layer's weights in
Keras' own layout (one initializer per Keras variable) and its initial states, and whose
body (a model-local ONNX function) is the standard ONNX ``GRU``/``LSTM``/``RNN`` for
onnxruntime. The generator reads the spec and writes one ``nn.GRU``/``nn.LSTM``/``nn.RNN``
(or a small cell module where torch's differs): no step is unrolled, no weight copied.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

DOMAIN = "ai.keras2torch"
KINDS = ("GRU", "LSTM", "SimpleRNN", "ConvLSTM")
GATES = {"GRU": 3, "LSTM": 4, "SimpleRNN": 1, "ConvLSTM": 4}
# Keras' gate blocks in torch's order (indices of Keras' blocks): GRU z r h -> r z n; LSTM i f c o = i f g o
TORCH_GATE_ORDER = {"GRU": [1, 0, 2], "LSTM": [0, 1, 2, 3], "SimpleRNN": [0]}


def reorder_gates(m, order: list[int], gates: int):
    """``m`` (numpy, gate blocks along axis 0) with its blocks in ``order``."""
    import numpy as np

    h = m.shape[0] // gates
    return np.concatenate([m[k * h:(k + 1) * h] for k in order], axis=0)


@dataclass
class RecurrentSpec:
    kind: str                        # GRU | LSTM | SimpleRNN | ConvLSTM
    layer: str                       # the Keras layer (the Bidirectional wrapper's name when wrapped)
    units: int                       # filters for ConvLSTM
    input_size: int                  # input channels for ConvLSTM
    activation: str = "tanh"
    recurrent_activation: str = "sigmoid"
    use_bias: bool = True
    reset_after: bool = True         # GRU only
    go_backwards: bool = False       # single direction only
    return_sequences: bool = False
    return_state: bool = False
    bidirectional: bool = False
    merge_mode: str | None = "concat"
    n_states: int = 0                # initial states given to the call (all directions)
    masked: bool = False             # a (batch, steps) bool mask is the node's last input
    zero_output_for_mask: bool = False   # masked steps output zeros (else the last valid output)
    rank: int = 0                    # ConvLSTM only: spatial rank, and its convolution's form
    kernel_size: list[int] = field(default_factory=list)
    strides: list[int] = field(default_factory=list)
    dilation: list[int] = field(default_factory=list)
    padding: str = "valid"
    dropout: float = 0.0             # Keras' dropout/recurrent_dropout (train() only; the cell modules)
    recurrent_dropout: float = 0.0
    implementation: int = 2          # Keras' LSTM/GRU: 1 draws one mask per gate (recurrent_dropout > 0 forces it)
    weights: list[str] = field(default_factory=list)    # roles in input order: "forward/kernel", ...
    variables: list[str] = field(default_factory=list)  # the Keras variable path of each weight

    @property
    def directions(self) -> tuple[str, ...]:
        return ("forward", "backward") if self.bidirectional else ("forward",)

    @property
    def op_type(self) -> str:
        """The node's op type: the kind, ``ConvLSTM2D`` for a rank-2 ConvLSTM."""
        return f"ConvLSTM{self.rank}D" if self.kind == "ConvLSTM" else self.kind

    @property
    def states_per_direction(self) -> int:
        return 2 if self.kind in ("LSTM", "ConvLSTM") else 1

    def n_outputs(self) -> int:
        main = 2 if self.bidirectional and self.merge_mode is None else 1
        return main + (self.states_per_direction * len(self.directions) if self.return_state else 0)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "RecurrentSpec":
        return cls(**json.loads(text))
