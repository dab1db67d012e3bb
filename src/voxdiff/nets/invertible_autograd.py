"""Memory-saving backward for chains of invertible ops (the memcnn / i-RevNet idea, in plain PyTorch).

:func:`run_chain` runs a list of :class:`~voxdiff.nets.invertible_blocks.InvertibleOp` on a
*stack* of tensors: each op consumes the last ``op.n_in`` tensors and pushes ``op.n_out`` (so
UNet skip splits and merges are ops too). With ``memory_saving=True`` the whole chain is one
``torch.autograd.Function``:

* forward runs every op under ``no_grad``; intermediate activations are freed as soon as the
  next op has consumed them; only the chain's final outputs (and ``temb``) are saved;
* backward walks the chain in reverse: it reconstructs each op's inputs from its outputs with
  ``op.inverse``, recomputes that one op with grad enabled and backpropagates through it
  (``torch.autograd.grad``), accumulating parameter and ``temb`` gradients. Peak memory is the
  stack plus one op's graph, whatever the depth. Ops with an ``inverse_with_graph`` method
  (every one-sided coupling) reconstruct and rebuild their graph with a single evaluation of
  the coupling function (the RevNet trick), so the backward costs one extra forward, not two.

The recomputation (and the inverse) runs under the autocast state the forward saw, and with
the RNG state (CPU and CUDA) the op saw in the forward restored, so dropout draws the same
masks. Gradients reach the parameters as ordinary inputs of the Function, so DDP's hooks fire
as usual. Double backward is not supported.
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from voxdiff.nets.invertible_blocks import InvertibleModule, InvertibleOp


def _as_tuple(x) -> tuple:
    return x if isinstance(x, tuple) else (x,)


def _is_deterministic(op: nn.Module) -> bool:
    return bool(getattr(op, "deterministic", False))


class _RngSnapshot:
    """CPU and CUDA generator states at one point of the forward."""

    def __init__(self, cuda_devices: Sequence[int]) -> None:
        self.cpu = torch.get_rng_state()
        self.cuda = [(d, torch.cuda.get_rng_state(d)) for d in cuda_devices]

    @contextlib.contextmanager
    def restored(self):
        """Run the block with this state; the global RNG is left as it was afterwards."""
        with torch.random.fork_rng(devices=[d for d, _ in self.cuda]):
            torch.set_rng_state(self.cpu)
            for d, state in self.cuda:
                torch.cuda.set_rng_state(state, d)
            yield


def _rng(snapshot: _RngSnapshot | None):
    return snapshot.restored() if snapshot is not None else contextlib.nullcontext()


def _autocast_state(device_type: str) -> list[tuple[str, bool, torch.dtype]]:
    states = []
    for dt in dict.fromkeys(("cpu", device_type)):
        try:
            states.append((dt, torch.is_autocast_enabled(dt), torch.get_autocast_dtype(dt)))
        except RuntimeError:  # device type without autocast support
            pass
    return states


@contextlib.contextmanager
def _autocast(states: list[tuple[str, bool, torch.dtype]]):
    with contextlib.ExitStack() as stack:
        for dt, enabled, dtype in states:
            stack.enter_context(torch.autocast(dt, dtype=dtype, enabled=enabled))
        yield


class _ChainSpec:
    """The ops of one chain call and which (deduplicated) trainable parameters each one owns."""

    def __init__(self, ops: Sequence[InvertibleOp], preserve_rng_state: bool) -> None:
        self.ops = list(ops)
        self.preserve_rng_state = preserve_rng_state
        self.params: list[nn.Parameter] = []
        index: dict[int, int] = {}
        self.op_params: list[list[int]] = []
        for op in self.ops:
            ids = []
            for p in op.parameters():
                if p.requires_grad:
                    if id(p) not in index:
                        index[id(p)] = len(self.params)
                        self.params.append(p)
                    ids.append(index[id(p)])
            self.op_params.append(ids)


def _step(op: InvertibleOp, state: list[torch.Tensor], temb: torch.Tensor | None) -> None:
    cut = len(state) - op.n_in
    if cut < 0:
        raise ValueError(f"{type(op).__name__} needs {op.n_in} inputs, the stack holds {len(state)}")
    outs = _as_tuple(op(*state[cut:], temb))
    del state[cut:]
    state.extend(outs)


class _InvertibleChainFunction(torch.autograd.Function):
    """apply(spec, n_state, temb, *state, *params) -> final state tuple; see the module docstring."""

    @staticmethod
    def forward(ctx, spec: _ChainSpec, n_state: int, temb: torch.Tensor | None, *tensors: torch.Tensor):
        inputs = tensors[:n_state]
        state = list(inputs)
        devices = sorted({t.get_device() for t in state if t.is_cuda})
        ctx.spec = spec
        ctx.n_in = n_state
        ctx.autocast = _autocast_state(state[0].device.type)
        ctx.rng = []
        for op in spec.ops:
            keep_rng = spec.preserve_rng_state and not _is_deterministic(op)
            ctx.rng.append(_RngSnapshot(devices) if keep_rng else None)
            _step(op, state, temb)
        # An output aliasing an input would be saved twice under one name: give it its own storage.
        outs = tuple(o.clone() if any(o is i for i in inputs) else o for o in state)
        ctx.n_out = len(outs)
        ctx.has_temb = temb is not None
        ctx.save_for_backward(*outs, *((temb,) if temb is not None else ()))
        return outs

    @staticmethod
    @once_differentiable
    def backward(ctx, *grad_outputs: torch.Tensor):
        spec: _ChainSpec = ctx.spec
        saved = ctx.saved_tensors
        state = [t.detach() for t in saved[:ctx.n_out]]
        temb = saved[ctx.n_out].detach() if ctx.has_temb else None
        temb_needs_grad = ctx.has_temb and ctx.needs_input_grad[2]
        grads = list(grad_outputs)
        param_grads: list[torch.Tensor | None] = [None] * len(spec.params)
        temb_grad = None
        with _autocast(ctx.autocast):
            for i in reversed(range(len(spec.ops))):
                op, rng = spec.ops[i], ctx.rng[i]
                cut = len(state) - op.n_out
                outs, gouts = tuple(state[cut:]), tuple(grads[cut:])
                del state[cut:], grads[cut:]
                tb = temb.detach().requires_grad_(True) if temb_needs_grad else temb
                fused = getattr(op, "inverse_with_graph", None)
                if fused is not None:
                    # One evaluation of the coupling function reconstructs and rebuilds the graph.
                    with torch.enable_grad(), _rng(rng):
                        leaves, recomputed, assemble = fused(*outs, temb=tb)
                else:
                    with torch.no_grad(), _rng(rng):
                        leaves = _as_tuple(op.inverse(*outs, temb=temb))
                    leaves = tuple(t.detach().requires_grad_(True) for t in leaves)
                    with torch.enable_grad(), _rng(rng):
                        recomputed = _as_tuple(op(*leaves, tb))
                    assemble = tuple
                del outs  # the reconstructed inputs replace them
                own = [spec.params[j] for j in spec.op_params[i]]
                targets = leaves + ((tb,) if temb_needs_grad else ()) + tuple(own)
                g = torch.autograd.grad(recomputed, targets, gouts, allow_unused=True)
                del recomputed
                n = len(leaves)
                grads.extend(assemble([gi if gi is not None else torch.zeros_like(x) for gi, x in zip(g[:n], leaves)]))
                state.extend(assemble([x.detach() for x in leaves]))
                if temb_needs_grad and g[n] is not None:
                    temb_grad = g[n] if temb_grad is None else temb_grad + g[n]
                for j, gp in zip(spec.op_params[i], g[n + int(temb_needs_grad):]):
                    if gp is not None:
                        param_grads[j] = gp if param_grads[j] is None else param_grads[j] + gp
        # Zeros rather than None: DDP (find_unused_parameters=False) waits for every parameter.
        param_grads = [g if g is not None else torch.zeros_like(p) for g, p in zip(param_grads, spec.params)]
        return (None, None, temb_grad, *grads, *param_grads)


def _needs_autograd(inputs: Sequence[torch.Tensor], temb: torch.Tensor | None, ops: Sequence[nn.Module]) -> bool:
    if not torch.is_grad_enabled():
        return False
    if any(t.requires_grad for t in inputs) or (temb is not None and temb.requires_grad):
        return True
    return any(p.requires_grad for op in ops for p in op.parameters())


def run_chain(ops: Sequence[InvertibleOp], inputs: Sequence[torch.Tensor], temb: torch.Tensor | None = None, *,
              memory_saving: bool = True, preserve_rng_state: bool = True) -> tuple[torch.Tensor, ...]:
    """Apply ``ops`` in order to the tensor stack ``inputs``; returns the final stack.

    ``memory_saving=False`` is plain autograd (every activation stored), the reference the
    memory-saving path must match. Without grad (sampling) both paths are the plain loop.
    """
    inputs = tuple(inputs)
    if memory_saving and ops and _needs_autograd(inputs, temb, ops):
        spec = _ChainSpec(ops, preserve_rng_state)
        return _InvertibleChainFunction.apply(spec, len(inputs), temb, *inputs, *spec.params)
    state = list(inputs)
    for op in ops:
        _step(op, state, temb)
    return tuple(state)


def inverse_chain(ops: Sequence[InvertibleOp], outputs: Sequence[torch.Tensor],
                  temb: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """Undo :func:`run_chain`: apply each op's inverse in reverse order to the output stack."""
    state = list(outputs)
    for op in reversed(list(ops)):
        cut = len(state) - op.n_out
        ins = _as_tuple(op.inverse(*state[cut:], temb=temb))
        del state[cut:]
        state.extend(ins)
    return tuple(state)


class InvertibleSequential(InvertibleModule):
    """A chain of invertible ops mapping one tensor to one tensor, with the memory-saving backward.

    ``InvertibleSequential(AdditiveCoupling(8, 32), AdditiveCoupling(8, 32, swap=True))`` stores
    only its output for backward when ``memory_saving`` (the default); set it to False for
    plain stored-activation autograd. ``preserve_rng_state`` restores the RNG per op when
    recomputing (needed for dropout; costs a few KB per op).
    """

    def __init__(self, *ops: InvertibleOp, memory_saving: bool = True, preserve_rng_state: bool = True) -> None:
        super().__init__()
        depth = 1
        for op in ops:
            if depth < op.n_in:
                raise ValueError(f"{type(op).__name__} needs {op.n_in} inputs, the stack holds {depth}")
            depth += op.n_out - op.n_in
        if depth != 1:
            raise ValueError(f"InvertibleSequential must map one tensor to one tensor, its ops end with {depth}")
        self.ops = nn.ModuleList(ops)
        self.memory_saving = memory_saving
        self.preserve_rng_state = preserve_rng_state

    @property
    def deterministic(self) -> bool:
        """True when every op is."""
        return all(_is_deterministic(op) for op in self.ops)

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        """Apply the ops in order."""
        return run_chain(self.ops, (x,), temb, memory_saving=self.memory_saving,
                         preserve_rng_state=self.preserve_rng_state)[0]

    def inverse(self, y: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        """Apply the inverses in reverse order."""
        return inverse_chain(self.ops, (y,), temb)[0]
