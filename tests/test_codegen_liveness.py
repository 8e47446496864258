"""``codegen.liveness.reuse_names``: the names of ``forward`` reused once a value is dead, one
case per rule of its docstring; and the generated module computes what it did before."""

from __future__ import annotations

import pytest

from pipeline.codegen.liveness import reuse_names

CASES = [
    pytest.param(  # 1, 2: a chain takes the name of its dead input
        ["x1 = self.conv(inp)", "x2 = F.relu(x1)", "x3 = self.fc(x2)"], ["x3"], {"x1": "x", "x2": "x", "x3": "x"},
        ["x = self.conv(inp)", "x = F.relu(x)", "x = self.fc(x)"], ["x"], id="chain"),
    pytest.param(  # 2: a value needed later keeps its name, the branch gets the next one
        ["x1 = F.relu(inp)", "x2 = self.a(x1)", "x3 = self.b(x2)", "x4 = x1 + x3", "x5 = F.relu(x4)"], ["x5"],
        dict.fromkeys(["x1", "x2", "x3", "x4", "x5"], "x"),
        ["x = F.relu(inp)", "x1 = self.a(x)", "x1 = self.b(x1)", "x = x + x1", "del x1", "x = F.relu(x)"], ["x"],
        id="skip_connection"),
    pytest.param(  # 3: kinds keep their hint; the last of a kind is deleted after its last use (5)
        ["padded_1 = F.pad(inp, [0, 1])", "x2 = self.conv(padded_1)", "x3 = F.relu(x2)"], ["x3"],
        {"padded_1": "padded", "x2": "x", "x3": "x"},
        ["padded = F.pad(inp, [0, 1])", "x = self.conv(padded)", "del padded", "x = F.relu(x)"], ["x"],
        id="kinds_and_del"),
    pytest.param(  # 3: a name the body uses otherwise is skipped
        ["x1 = x + 1", "x2 = x1 * 2"], ["x2"], {"x1": "x", "x2": "x"},
        ["x1 = x + 1", "x1 = x1 * 2"], ["x1"], id="argument_named_x"),
    pytest.param(  # 1: two names bound on one line never share
        ["parts_1 = torch.split(inp, 2)", "x2 = parts_1[0] + parts_1[1]", "x3, x4 = F.relu(x2), x2"], ["x3 + x4"],
        {"parts_1": "parts", "x2": "x", "x3": "x", "x4": "x"},
        ["parts = torch.split(inp, 2)", "x = parts[0] + parts[1]", "del parts", "x, x1 = F.relu(x), x"], ["x + x1"],
        id="tuple_targets"),
    pytest.param(  # 1: a subscript target reads after binding: the dead input's name is not reused there
        ["x1 = inp + 1", "x2 = inp.clone()", "x2[x1 > 0] = 0", "x3 = x2 * 2"], ["x3"],
        {"x1": "x", "x2": "x", "x3": "x"},
        ["x = inp + 1", "x1 = inp.clone()", "x1[x > 0] = 0", "del x", "x1 = x1 * 2"], ["x1"], id="subscript_store"),
    pytest.param(  # 4: a variable another name extends is left, and deleted when dead (5)
        ["lstm_1, lstm_1_h = self.lstm(inp)", "x2 = lstm_1 + 1", "x3 = x2 * lstm_1_h"], ["x3"],
        {"lstm_1": "lstm", "x2": "x", "x3": "x"},
        ["lstm_1, lstm_1_h = self.lstm(inp)", "x = lstm_1 + 1", "del lstm_1", "x = x * lstm_1_h"], ["x"],
        id="derived_names_kept"),
    pytest.param(  # 4: a line that is not one statement: nothing changes
        ["x1 = inp + 1; x2 = x1", "x3 = x1"], ["x3"], {"x1": "x", "x2": "x", "x3": "x"},
        ["x1 = inp + 1; x2 = x1", "x3 = x1"], ["x3"], id="not_one_statement"),
    pytest.param(  # 2: an output read in the return stays alive to the end
        ["x1 = F.relu(inp)", "x2 = self.a(x1)"], ["x1", "x2"], {"x1": "x", "x2": "x"},
        ["x = F.relu(inp)", "x1 = self.a(x)"], ["x", "x1"], id="two_outputs"),
]


@pytest.mark.parametrize("lines, outputs, kinds, want_lines, want_outputs", CASES)
def test_reuse_names(lines, outputs, kinds, want_lines, want_outputs):
    got_lines, got_outputs, index = reuse_names(lines, outputs, kinds)
    assert (got_lines, got_outputs) == (want_lines, want_outputs)
    assert len(index) == len(got_lines) and sorted(set(index)) == list(range(len(lines)))
    assert reuse_names(got_lines, got_outputs, {}) == (got_lines, got_outputs, list(range(len(got_lines))))


def test_del_line_belongs_to_the_line_before():
    lines, _, index = reuse_names(["padded_1 = F.pad(inp, [0, 1])", "x2 = self.conv(padded_1)", "x3 = F.relu(x2)"],
                                  ["x3"], {"padded_1": "padded", "x2": "x", "x3": "x"})
    assert [(l, index[k]) for k, l in enumerate(lines)] == [
        ("padded = F.pad(inp, [0, 1])", 0), ("x = self.conv(padded)", 1), ("del padded", 1), ("x = F.relu(x)", 2)]


def test_same_numbers_with_two_names():
    """A small residual body renamed computes what the fresh-named one does, with two names."""
    import textwrap

    import torch

    lines = ["x1 = F.relu(inp)", "x2 = x1 * 2.0", "x3 = x2 + 1.0", "x4 = x1 + x3", "x5 = torch.tanh(x4)"]
    kinds = dict.fromkeys(["x1", "x2", "x3", "x4", "x5"], "x")
    new, out, _ = reuse_names(lines, ["x5"], kinds)

    def compile_(body, ret):
        src = "def f(inp):\n" + textwrap.indent("\n".join([*body, f"return {ret}"]), "    ")
        env = {"torch": torch, "F": torch.nn.functional}
        exec(src, env)
        return env["f"]

    x = torch.randn(3, 5)
    torch.testing.assert_close(compile_(new, out[0])(x), compile_(lines, "x5")(x), atol=0.0, rtol=0.0)
    assert {l.split(" = ")[0] for l in new if " = " in l} == {"x", "x1"}
