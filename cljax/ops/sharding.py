"""Data parallelism inside a learner's own training loop, and replay buffers split over devices.

The runner shards incoming batches over the mesh's ``data`` axis (``cljax/train/mesh.py``).
Learners that train at the end of a step (ER, offline, GDumb, EWC, MAS, DietCL, joint) draw their
mini-batches *inside* jit from their buffers, so nothing tells XLA to split that work: every device
would compute the whole batch. ``data_rows`` marks a sampled batch as split by rows over ``data``;
XLA then runs each device's rows and all-reduces the gradients (the parameter-server role is a
collective over the mesh).

Buffers: ``state_specs(state, n)`` gives the placement that splits every replay buffer's items
over ``data`` (the rest of the state replicated), and the buffer policies read and write their
items through ``scatter_rows``, ``take_rows`` and ``permute_rows``, which keep them split inside
jit and give bit for bit the results of one device.

It reads the mesh the runner installs with ``jax.set_mesh`` at trace time, so learner code stays
mesh-free and single-device use (no mesh, or one device) is unchanged.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P


def data_size() -> int:
  """Devices on the ``data`` axis of the mesh set by ``jax.set_mesh`` (1 when none is set)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or "data" not in mesh.axis_names:
    return 1
  return int(mesh.shape["data"])


def data_rows(tree):
  """Constrains every array of ``tree`` [B, ...] to be split over ``data`` along axis 0.

  Arrays whose leading size does not divide the device count (and scalars) are left as they are,
  so any batch size works; use batch sizes that divide the device count to get the split.
  """
  n = data_size()
  if n <= 1:
    return tree

  def constrain(a):
    if getattr(a, "ndim", 0) >= 1 and a.shape[0] % n == 0:
      return jax.lax.with_sharding_constraint(a, P("data"))
    return a

  return jax.tree.map(constrain, tree)


# Sharded buffers -------------------------------------------------------------------------------
#
# A buffer state type (a NamedTuple of ``cljax.ops.buffers``) names its item arrays in the class
# attribute ``SHARDED_ROWS``: the arrays whose leading axis is the capacity and that hold the
# items themselves (images, PQ codes). Those are what makes a buffer big, so they are split over
# ``data``; the per-slot labels and counters stay replicated (4 bytes a slot), so every eviction
# and every sample index is computed once, identically, on every device, with no collective per
# offered row. The helpers below do the reads and writes of item arrays; with no mesh (or one
# device, or a capacity that does not divide the shard count) each is the plain jnp expression.

AXIS = "data"


def _buffer_fields(node):
  """The ``SHARDED_ROWS`` field names of a buffer state, None for anything else."""
  fields = getattr(type(node), "SHARDED_ROWS", None)
  return fields if fields is not None and isinstance(node, tuple) else None


def state_specs(state, num_shards: int):
  """Per-leaf ``PartitionSpec`` s that shard every buffer's item arrays of ``state``.

  Args:
    state: any pytree (a learner state); buffer states are found by their type (NamedTuples
      declaring ``SHARDED_ROWS``), wherever they sit.
    num_shards: devices on the ``data`` axis the state will be placed on.

  Returns:
    A pytree of the structure of ``state`` with a ``PartitionSpec`` per leaf: ``P("data")`` on a
    buffer's item arrays [capacity, ...] when capacity is a multiple of ``num_shards`` (> 1),
    ``P()`` (replicated) everywhere else. Use with ``cljax.train.mesh.place(mesh, state, specs)``.
  """
  num_shards = int(num_shards)

  def spec(node):
    fields = _buffer_fields(node)
    if fields is None:
      return P()
    return type(node)(*[
        P(AXIS) if (f in fields and num_shards > 1 and a.ndim >= 1
                    and a.shape[0] % num_shards == 0) else P()
        for f, a in zip(node._fields, node)])

  return jax.tree.map(spec, state, is_leaf=lambda n: _buffer_fields(n) is not None)


def replicate(tree):
  """Every array of ``tree`` constrained to be whole on every device (inside jit, with a mesh
  with data > 1; the identity otherwise). Buffers apply it to a batch's labels and mask, so every
  decision derived from them is computed replicated rather than split and gathered back."""
  if data_size() <= 1:
    return tree
  return jax.tree.map(lambda a: jax.lax.with_sharding_constraint(a, P()), tree)


def constrain(state):
  """``state`` (e.g. a buffer state) constrained inside jit to the placement of
  ``state_specs(state, data_size())``; the identity with no mesh or one device.

  Policies whose insert computes replicated per-slot metadata next to a sharded item array call
  it, so XLA does not hand the metadata back split over ``data`` (which would change the state's
  placement and recompile the next call).
  """
  n = data_size()
  if n <= 1:
    return state
  leaves, treedef = jax.tree.flatten(state)
  specs = treedef.flatten_up_to(state_specs(state, n))
  return treedef.unflatten([jax.lax.with_sharding_constraint(a, s)
                            for a, s in zip(leaves, specs)])


def row_shards(a) -> int:
  """Shards the rows of ``a`` [capacity, ...] are split into inside jit: ``data_size()`` when a
  mesh with data > 1 is set and divides the capacity, else 1 (the plain, unsharded code)."""
  n = data_size()
  return n if n > 1 and a.ndim >= 1 and a.shape[0] % n == 0 else 1


def _ring_rows(rows, per: int, n: int) -> bool:
  """Whether incoming ``rows`` travel round the ring (split over ``data``) rather than whole to
  every device: when they are more than one shard's worth (``per``) and split evenly. A batch
  is gathered (it is no bigger than a shard); a sharded store copied into a buffer is not."""
  return rows.shape[0] > per and rows.shape[0] % n == 0


def _ring(block, n: int, visit, carry):
  """Passes this shard's ``block`` (a pytree) round the ring of ``n`` shards.

  Calls ``carry = visit(carry, block, owner)`` once for every shard's block (``owner`` is the
  shard it came from), moving one block at a time with ``ppermute``: a device holds at most two
  blocks, never the whole array.
  """
  owner = jax.lax.axis_index(AXIS)
  perm = [(j, (j + 1) % n) for j in range(n)]
  for s in range(n):
    carry = visit(carry, block, owner)
    if s < n - 1:
      block = jax.lax.ppermute(block, AXIS, perm)
      owner = (owner - 1) % n
  return carry


def _local(idx, owner, per: int):
  """(local row, in this block) of global rows ``idx`` for the block of ``owner`` (per rows)."""
  loc = idx - owner * per
  return loc, (loc >= 0) & (loc < per)


def _select(mask, new, old):
  return jnp.where(mask.reshape(mask.shape + (1,) * (new.ndim - 1)), new, old)


def scatter_rows(a: jax.Array, idx: jax.Array, rows: jax.Array) -> jax.Array:
  """``a.at[idx].set(rows, mode="drop")``: a [capacity, ...], idx [B] int in [0, capacity]
  (capacity or more: dropped), rows [B, ...]; in-range indices must be distinct.

  Sharded (``row_shards(a) > 1``): each shard writes the rows whose slot is in its range, and the
  result stays split over ``data``. Rows of more than one shard's worth (a sharded store copied
  into a buffer) travel round the ring block by block rather than being gathered.
  """
  rows = rows.astype(a.dtype)
  n = row_shards(a)
  if n == 1:
    return a.at[idx].set(rows, mode="drop")
  per = a.shape[0] // n

  def write(a_l, blk, owner):
    del owner  # the destination is this shard, whichever shard the rows came from
    loc, inside = _local(blk[0], jax.lax.axis_index(AXIS), per)
    return a_l.at[jnp.where(inside, loc, per)].set(blk[1], mode="drop")

  ring = _ring_rows(rows, per, n)

  def local(a_l, i, r):
    return _ring((i, r), n, write, a_l) if ring else write(a_l, (i, r), None)

  spec = P(AXIS) if ring else P()
  return jax.shard_map(local, in_specs=(P(AXIS), spec, spec), out_specs=P(AXIS))(a, idx, rows)


def _exact_psum(x: jax.Array) -> jax.Array:
  """psum over ``data`` of arrays where every position is nonzero on at most one shard, bit for
  bit: summed as unsigned integers of the same width (so -0.0, NaN payloads survive)."""
  if x.dtype == jnp.bool_:
    return jax.lax.psum(x.astype(jnp.uint8), AXIS).astype(bool)
  uint = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint64}[x.dtype.itemsize]
  bits = jax.lax.bitcast_convert_type(x, uint)
  if uint == jnp.uint16:  # NCCL has no 16-bit integer reduction: sum 16-bit patterns in 32 bits
    return jax.lax.bitcast_convert_type(
        jax.lax.psum(bits.astype(jnp.uint32), AXIS).astype(jnp.uint16), x.dtype)
  return jax.lax.bitcast_convert_type(jax.lax.psum(bits, AXIS), x.dtype)


def take_rows(a: jax.Array, idx: jax.Array) -> jax.Array:
  """``a[idx]``: rows idx [n] int in [0, capacity) of a [capacity, ...] -> [n, ...].

  Sharded: each shard picks the drawn rows it holds (zeros elsewhere) and one psum of the n rows
  assembles them on every device; the buffer itself never moves.
  """
  n = row_shards(a)
  if n == 1:
    return a[idx]
  per = a.shape[0] // n

  def local(a_l, i):
    loc, inside = _local(i, jax.lax.axis_index(AXIS), per)
    got = a_l[jnp.clip(loc, 0, per - 1)]
    return _exact_psum(_select(inside, got, jnp.zeros_like(got)))

  return jax.shard_map(local, in_specs=(P(AXIS), P()), out_specs=P())(a, idx)


def permute_rows(a: jax.Array, extra: jax.Array, idx: jax.Array) -> jax.Array:
  """``concatenate([a, extra])[idx]``: a [capacity, ...], extra [B, ...], idx [capacity] int in
  [0, capacity + B) -> [capacity, ...], e.g. a buffer compacted after a batch was offered.

  Sharded: each shard builds its own output rows; the blocks of ``a`` (and of ``extra`` when it
  is more than one shard's worth) visit every shard round the ring, so the result stays split
  over ``data`` and no device holds the whole buffer.
  """
  extra = extra.astype(a.dtype)
  n = row_shards(a)
  if n == 1:
    return jnp.concatenate([a, extra])[idx]
  cap, b = a.shape[0], extra.shape[0]
  per = cap // n

  def local(a_l, e, i):
    # idx comes in whole (it is computed replicated; passing it split would make XLA split the
    # computation of idx and the metadata beside it, then gather them back) and each shard
    # slices the sources of its own output rows.
    i = jax.lax.dynamic_slice_in_dim(i, jax.lax.axis_index(AXIS) * per, per)

    def pick(offset, size):  # rows offset + [owner * size, (owner + 1) * size) of the concat
      def visit(out, blk, owner):
        loc, inside = _local(i - offset, owner, size)
        return _select(inside, blk[jnp.clip(loc, 0, size - 1)], out)
      return visit

    out = jnp.zeros((i.shape[0],) + a_l.shape[1:], a_l.dtype)
    out = _ring(e, n, pick(cap, b // n), out) if ring else pick(cap, b)(out, e, 0)
    return _ring(a_l, n, pick(0, per), out)

  ring = _ring_rows(extra, per, n)
  return jax.shard_map(local, in_specs=(P(AXIS), P(AXIS) if ring else P(), P()),
                       out_specs=P(AXIS))(a, extra, idx)


def is_key(a) -> bool:
  """True for an array of typed PRNG keys (saved and moved by their key data)."""
  return isinstance(a, jax.Array) and jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key)
