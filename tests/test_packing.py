"""Packed rows through the model: a row of documents joined without padding (``DataCollatorWithFlattening``,
or ``scripts/train.py --packing``'s rows) must give what each document run alone gives, in the logits and in
the gradients of every parameter, whichever way the document starts are passed (``position_ids`` restarting
at 0, ``cu_seq_lens_q``/``_k``, ``seq_idx``). The torch backends run in float64 (to 1e-10), the Triton
kernels in float32 through Triton's interpreter (TRITON_INTERPRET=1, conftest.py) at tiny sizes (to 1e-5).
Also: ambiguous boundaries are refused naming the argument; plain positions change nothing, bit for bit;
the public scan ops take ``resets``; torch.compile and the Trainer run packed batches.
"""
import pytest
import torch
from transformers import DataCollatorWithFlattening, Trainer, TrainingArguments

from hf_lrnn import LRNNCache, ops
from hf_lrnn.gates_lrnn import GATE_NORMALIZATIONS
from hf_lrnn.generation_lrnn import CACHE_FIELD
from hf_lrnn.ops_lrnn import hlru_lagged_states
from hf_lrnn.scan_reference_lrnn import hlru_scan_reference
from helpers import F64, ids, relative_error, scan_inputs, tiny_model

DOCUMENTS = [7, 1, 13, 5, 16]  # the documents: one of a single token, 42 tokens in all
# Two rows of 42 tokens split differently (one-token documents first and last).
ROWS = ([7, 1, 13, 5, 16], [1, 20, 4, 16, 1])
TOL64 = dict(rtol=1e-10, atol=1e-10)


def _documents(lengths, seed=0):
    """Token-id lists of the given lengths."""
    return [ids(1, n, seed=seed + i)[0].tolist() for i, n in enumerate(lengths)]


def _rows(splits, seed=0):
    """input_ids (B, T) and every boundary argument of rows packed from documents of the lengths in
    ``splits`` (one list per row, equal sums), plus the documents themselves (per row)."""
    documents = [_documents(lengths, seed=seed + 10 * b) for b, lengths in enumerate(splits)]
    input_ids = torch.tensor([[t for doc in row for t in doc] for row in documents])
    position_ids = torch.tensor([[p for doc in row for p in range(len(doc))] for row in documents])
    seq_idx = torch.tensor([[i for i, doc in enumerate(row) for _ in doc] for row in documents], dtype=torch.int32)
    lengths = [len(doc) for row in documents for doc in row]
    cu_seq_lens = torch.tensor([0] + lengths, dtype=torch.int32).cumsum(0, dtype=torch.int32)
    boundaries = dict(position_ids=position_ids, seq_idx=seq_idx, cu_seq_lens_q=cu_seq_lens, cu_seq_lens_k=cu_seq_lens,
                      max_length_q=max(lengths), max_length_k=max(lengths))
    return input_ids, boundaries, documents


def _weights(shape, seed=1):
    """Fixed random weights of the logits: the scalar whose gradients are compared."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _grads(model):
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def packed_outputs(model, weights, **inputs):
    """Logits of one packed forward and the parameters' gradients of sum(logits * weights)."""
    model.zero_grad()
    logits = model(**inputs, use_cache=False).logits
    (logits * weights.to(logits.dtype)).sum().backward()
    return logits.detach(), _grads(model)


def alone_outputs(model, documents, weights):
    """Logits of every document run alone, joined as packed, and the gradients of the same scalar."""
    model.zero_grad()
    rows, total = [], 0.0
    for b, row in enumerate(documents):
        pieces, start = [], 0
        for doc in row:
            logits = model(input_ids=torch.tensor([doc]), use_cache=False).logits
            total = total + (logits * weights[b:b + 1, start:start + len(doc)].to(logits.dtype)).sum()
            pieces.append(logits.detach())
            start += len(doc)
        rows.append(torch.cat(pieces, 1))
    total.backward()
    return torch.cat(rows), _grads(model)


def assert_packed_equals_alone(model, batch, documents, **tolerance):
    weights = _weights((*batch["input_ids"].shape, model.config.vocab_size))
    packed, packed_grads = packed_outputs(model, weights, **batch)
    alone, alone_grads = alone_outputs(model, documents, weights)
    torch.testing.assert_close(packed, alone, **tolerance)
    for name, grad in alone_grads.items():
        torch.testing.assert_close(packed_grads[name], grad, **tolerance, msg=name)


def _collate(documents, **collator_options):
    batch = DataCollatorWithFlattening(**collator_options)([{"input_ids": doc} for doc in documents])
    batch.pop("labels")
    return batch


# ---------------------------------------------------------------------------------------------
# Packed == alone on the torch backends (float64)
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mixer", ["hlru", "bdlru"])
@pytest.mark.parametrize("normalization", GATE_NORMALIZATIONS)
@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_collated_documents_equal_each_alone(mixer, normalization, backend):
    """DataCollatorWithFlattening's row (position_ids only) through LRNNForCausalLM: 42 tokens, so the torch
    backend runs the chunked scans, "reference" the loop."""
    model = tiny_model(mixer, gate_normalization=normalization, scan_backend=backend).double()
    documents = _documents(DOCUMENTS)
    assert_packed_equals_alone(model, _collate(documents), [documents], **TOL64)


@pytest.mark.parametrize("mixer", ["hlru", "bdlru", "hybrid"])
@pytest.mark.parametrize("lengths", [[3, 1, 5, 1], [1, 1, 1], [1], [63, 1, 5, 27]],
                         ids=["loop-path", "one-token-documents", "T=1", "chunk-edges"])
def test_short_rows_one_token_documents_and_chunk_edges(mixer, lengths):
    """T <= 16 (the loop), documents of one token only, a row of one token (T = 1), and starts on the chunked
    scan's chunk edges (chunks of 64 steps: starts at 63, the last step of the first chunk, and 64)."""
    model = tiny_model(mixer).double()
    documents = _documents(lengths, seed=5)
    assert_packed_equals_alone(model, _collate(documents), [documents], **TOL64)


@pytest.mark.parametrize("mixer", ["hlru", "bdlru"])
@pytest.mark.parametrize("boundary", ["position_ids", "cu_seq_lens_q", "seq_idx", "all"])
def test_rows_of_different_splits_through_each_boundary_argument(mixer, boundary):
    """Two rows split differently (as train.py --packing makes them), the starts passed as position_ids,
    cu_seq_lens_q (offsets into the flattened 2 x 42 tokens), seq_idx, or all of them (with max_length_*)."""
    model = tiny_model(mixer).double()
    input_ids, boundaries, documents = _rows(ROWS)
    if boundary != "all":
        boundaries = {boundary: boundaries[boundary]}
    assert_packed_equals_alone(model, dict(input_ids=input_ids, **boundaries), documents, **TOL64)


def test_collator_flash_kwargs_and_seq_idx():
    """Everything DataCollatorWithFlattening can return, at once: position_ids, cu_seq_lens_q/k,
    max_length_q/k, seq_idx."""
    model = tiny_model("hybrid").double()
    documents = _documents(DOCUMENTS)
    batch = _collate(documents, return_flash_attn_kwargs=True, return_seq_idx=True)
    assert {"cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k", "seq_idx"} <= set(batch)
    assert_packed_equals_alone(model, batch, [documents], **TOL64)


def test_flash_kwargs_from_transformers_helper_with_tensor_max_lengths():
    """transformers' prepare_fa_kwargs_from_position_ids gives max_length_q/_k as 0-dim tensors (the collator
    gives ints): taken and checked like ints, once refused as "must be an int"; other tensors are refused."""
    from transformers.modeling_flash_attention_utils import prepare_fa_kwargs_from_position_ids

    model = tiny_model("hlru").double()
    documents = _documents(DOCUMENTS)
    batch = _collate(documents)
    (cu_q, cu_k), (max_q, max_k) = prepare_fa_kwargs_from_position_ids(batch.pop("position_ids"))
    assert isinstance(max_q, torch.Tensor) and max_q.dim() == 0
    batch.update(cu_seq_lens_q=cu_q, cu_seq_lens_k=cu_k, max_length_q=max_q, max_length_k=max_k)
    assert_packed_equals_alone(model, batch, [documents], **TOL64)
    with pytest.raises(ValueError, match="max_length_k=15 is shorter than the longest document"):
        model(**(batch | dict(max_length_k=max_k - 1)))
    with pytest.raises(TypeError, match=r"max_length_q must be an int or a 0-dim integer tensor .* got a torch.int32 "
                                        r"tensor of shape \(1,\)"):
        model(**(batch | dict(max_length_q=max_q[None])))


@pytest.mark.parametrize("lengths", [DOCUMENTS, [3, 1, 5, 1]])
def test_an_attention_mask_of_ones_changes_nothing(lengths):
    """A mask of ones: dropped for 42 tokens, kept (the masked lag readout) up to 16 tokens."""
    model = tiny_model("hlru").double()
    documents = _documents(lengths)
    batch = _collate(documents)
    batch["attention_mask"] = torch.ones_like(batch["input_ids"])
    assert_packed_equals_alone(model, batch, [documents], **TOL64)


@pytest.mark.parametrize("with_mask", [False, True])
def test_hlru_readout_lags_are_the_scans_state(with_mask):
    """hlru_lagged_states with document starts, an initial state and (or not) a mask: s_t is the state the
    reference scan holds after step t, [h_t, ..., h_{t-m+1}], zero for lags before the latest start."""
    v, logits, state, mask = scan_inputs("hlru", 2, 12, 3, 3, with_state=True, with_mask=with_mask, dtype=F64, seed=6)
    resets = torch.zeros(2, 12, dtype=torch.bool)
    resets[0, [3, 4, 9]] = True
    resets[1, [1, 7, 8]] = True
    if with_mask:
        mask[1, 7] = False  # a padding step on a document start
    h, _ = hlru_scan_reference(v, logits, initial_state=state, mask=mask, resets=resets)
    lagged = hlru_lagged_states(h, state, mask, resets)
    for t in range(12):
        prefix = (slice(None), slice(0, t + 1))
        _, lags = hlru_scan_reference(v[prefix], logits[prefix], initial_state=state, output_final_state=True,
                                      mask=None if mask is None else mask[prefix], resets=resets[prefix])
        assert torch.equal(lagged[:, t], lags), t


@pytest.mark.parametrize("mixer", ["hlru", "bdlru"])
def test_without_boundaries_the_state_leaks(mixer):
    """What the equality tests guard against: the same row without position_ids runs one state through all
    documents (the issue's symptom), far beyond the tolerance."""
    model = tiny_model(mixer).double()
    documents = _documents(DOCUMENTS)
    batch = _collate(documents)
    with torch.no_grad():
        packed = model(**batch).logits
        leaked = model(input_ids=batch["input_ids"]).logits
    assert (packed - leaked).abs().max() > 1e-3


# ---------------------------------------------------------------------------------------------
# Triton kernels (float32, interpreter)
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mixer", ["hlru", "bdlru"])
@pytest.mark.parametrize("normalization", GATE_NORMALIZATIONS)
def test_triton_collated_documents_equal_each_alone(mixer, normalization):
    pytest.importorskip("triton")
    model = tiny_model(mixer, gate_normalization=normalization, scan_backend="triton", num_hidden_layers=1)
    documents = _documents([3, 1, 5, 4])
    batch = _collate(documents)
    weights = _weights((*batch["input_ids"].shape, model.config.vocab_size))
    packed, packed_grads = packed_outputs(model, weights, **batch)
    alone, alone_grads = alone_outputs(model, [documents], weights)
    assert relative_error(packed, alone) < 1e-5
    for name, grad in alone_grads.items():
        assert relative_error(packed_grads[name], grad) < 1e-5, name


# ---------------------------------------------------------------------------------------------
# Plain positions, padding and decoding: unchanged
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mixer", ["hlru", "bdlru"])
def test_plain_position_ids_give_bit_identical_outputs(mixer):
    model = tiny_model(mixer)
    x = ids(2, 30)
    with torch.no_grad():
        plain = model(input_ids=x).logits
        for position_ids in (torch.arange(30).expand(2, 30), torch.arange(30)[None]):
            assert torch.equal(model(input_ids=x, position_ids=position_ids).logits, plain)


@pytest.mark.parametrize("mixer", ["hlru", "bdlru"])
def test_left_padding_with_its_position_ids_is_unchanged(mixer):
    """A left-padded batch with transformers' position ids (cumsum of the mask - 1, 1 at padding), which
    restart at 0 after the padding, or with 0..T-1 over the whole row: not packed, bit for bit."""
    model = tiny_model(mixer)
    x = ids(2, 20)
    mask = torch.ones(2, 20, dtype=torch.long)
    mask[1, :6] = 0
    with torch.no_grad():
        plain = model(input_ids=x, attention_mask=mask).logits
        generated_positions = (mask.cumsum(1) - 1).masked_fill(mask == 0, 1)
        for position_ids in (generated_positions, torch.arange(20).expand(2, 20)):
            assert torch.equal(model(input_ids=x, attention_mask=mask, position_ids=position_ids).logits, plain)


@pytest.mark.parametrize("mixer", ["hlru", "bdlru"])
def test_decoding_with_offset_position_ids_is_unchanged(mixer):
    """A prompt then decode steps with a cache: offset positions (a continuation) change nothing."""
    model = tiny_model(mixer)
    x = ids(2, 24)
    with torch.no_grad():
        outputs = []
        for with_positions in (False, True):
            cache = LRNNCache(model.config, batch_size=2)
            steps = [model(input_ids=x[:, :20], **{CACHE_FIELD: cache}).logits]
            for t in range(20, 24):
                positions = dict(position_ids=torch.full((2, 1), t)) if with_positions else {}
                steps.append(model(input_ids=x[:, t:t + 1], **{CACHE_FIELD: cache}, **positions).logits)
            outputs.append(torch.cat(steps, 1))
    assert torch.equal(outputs[0], outputs[1])


# ---------------------------------------------------------------------------------------------
# Refusals
# ---------------------------------------------------------------------------------------------

def _bad_boundaries():
    """(keyword arguments beside input_ids (1, 8) or the given input_ids, error type, message)."""
    jump = torch.tensor([[0, 1, 2, 5, 6, 7, 8, 9]])
    down = torch.tensor([[0, 1, 2, 1, 2, 3, 4, 5]])
    packed = torch.tensor([[0, 1, 2, 0, 1, 2, 3, 4]])
    cu = lambda *values: torch.tensor(values, dtype=torch.int32)  # noqa: E731
    mask = torch.ones(1, 8, dtype=torch.long)
    mask[0, 7] = 0  # right padding
    return [
        (dict(position_ids=jump), ValueError, "position_ids neither count up by one nor restart at 0 at row 0, position 3"),
        (dict(position_ids=down), ValueError, "position_ids neither count up by one nor restart at 0"),
        (dict(position_ids=packed + 2), ValueError, "position_ids neither count up by one nor restart at 0"),  # position_ids_start=2
        (dict(position_ids=packed - 1), ValueError, "position_ids must be >= 0"),
        (dict(position_ids=packed.float()), TypeError, "position_ids must be an integer torch.Tensor"),
        (dict(position_ids=torch.zeros(1, 9, dtype=torch.long)), ValueError, r"position_ids must have shape \(batch, seq_len\)"),
        (dict(position_ids=packed, attention_mask=mask), ValueError, "attention_mask has padding"),
        (dict(cu_seq_lens_q=cu(0, 3, 8), position_ids=torch.arange(8)[None]), ValueError,
         "cu_seq_lens_q and position_ids describe different document starts, first at row 0, position 3"),
        (dict(cu_seq_lens_q=cu(0, 5, 3, 8)), ValueError, "cu_seq_lens_q must increase strictly from 0"),
        (dict(cu_seq_lens_q=cu(0, 3, 7)), ValueError, "cu_seq_lens_q must increase strictly from 0 to batch"),
        (dict(cu_seq_lens_q=cu(0, 3, 8), cu_seq_lens_k=cu(0, 4, 8)), ValueError, "cu_seq_lens_q and cu_seq_lens_k differ"),
        (dict(cu_seq_lens_q=cu(0, 3, 8), max_length_q=4), ValueError, "max_length_q=4 is shorter than the longest document"),
        (dict(cu_seq_lens_q=cu(0, 3, 8), max_length_q=5.0), TypeError, "max_length_q must be an int"),
        (dict(max_length_k=5), ValueError, "max_length_q / max_length_k describe cu_seq_lens_q"),
        (dict(seq_idx=torch.tensor([[0, 0, 1, 1, 0, 2, 2, 2]])), ValueError, "seq_idx must not decrease along a row.*position 4"),
        (dict(seq_idx=torch.tensor([[0, 0, 0, 0, 1, 1, 1, 1]]), position_ids=packed), ValueError,
         "seq_idx and position_ids describe different document starts"),
        (dict(input_ids=ids(2, 4), cu_seq_lens_q=cu(0, 3, 8)), ValueError, "runs from one row into the next"),
    ]


@pytest.mark.parametrize("case", range(len(_bad_boundaries())))
def test_ambiguous_boundaries_are_refused_naming_the_argument(case):
    kwargs, error, message = _bad_boundaries()[case]
    kwargs.setdefault("input_ids", ids(1, 8))
    with pytest.raises(error, match=message):
        tiny_model("hlru")(**kwargs)


def test_packed_rows_with_a_cache_are_refused():
    model = tiny_model("bdlru")
    cache = LRNNCache(model.config, batch_size=1)
    with pytest.raises(ValueError, match="a cache was passed with packed rows"):
        model(input_ids=ids(1, 8), position_ids=torch.tensor([[0, 1, 2, 0, 1, 2, 3, 4]]), **{CACHE_FIELD: cache})
    with pytest.raises(ValueError, match="a cache was passed with packed rows"):
        model(input_ids=ids(1, 8), seq_idx=torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1]]), **{CACHE_FIELD: cache})


@pytest.mark.parametrize("mixer", ["hlru", "bdlru"])
def test_generate_refuses_packed_prompts_naming_the_argument(mixer):
    """generate() drops position_ids (no positional embeddings), so packed position ids would let the state run
    from one document into the next unnoticed: they are refused, as are the other packing keywords (once a
    misleading "a cache was passed" or a shape error at the first decode step). Plain and left-padded
    position ids (transformers' own, with their attention mask) still generate what no position ids give."""
    model = tiny_model(mixer)
    prompt, boundaries, _ = _rows([[5, 3]])
    with pytest.raises(ValueError, match="generate\\(\\): position_ids restart at 0 at row 0, position 5"):
        model.generate(prompt, position_ids=boundaries["position_ids"], max_new_tokens=2)
    with pytest.raises(ValueError, match="generate\\(\\): position_ids restart at 0"):
        model.generate(inputs_embeds=model.get_input_embeddings()(prompt), position_ids=boundaries["position_ids"],
                       max_new_tokens=2)
    for name in ("seq_idx", "cu_seq_lens_q", "max_length_k"):
        with pytest.raises(ValueError, match=f"generate\\(\\): {name} describe"):
            model.generate(prompt, **{name: boundaries[name]}, max_new_tokens=2)
    with pytest.raises(ValueError, match="generate\\(\\): seq_idx describe"):  # even one document per row
        model.generate(prompt, seq_idx=torch.zeros_like(prompt), max_new_tokens=2)

    left_padded = prompt.repeat(2, 1)
    mask = torch.ones_like(left_padded)
    left_padded[1, :3], mask[1, :3] = 0, 0
    transformers_positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    for x, positions, extra in ((prompt, torch.arange(8)[None], {}),
                                (left_padded, transformers_positions, dict(attention_mask=mask))):
        expected = model.generate(x, max_new_tokens=3, do_sample=False, **extra)
        assert torch.equal(model.generate(x, position_ids=positions, max_new_tokens=3, do_sample=False, **extra), expected)


def test_forward_reads_every_check_in_one_host_read(monkeypatch):
    """An eager forward reads the token ids' range, the boundary checks and whether the mask is all ones with
    one read_flags call (one host sync on a GPU); bad token ids are still refused with packed rows."""
    from hf_lrnn import modeling_lrnn

    reads = []

    def recording_read(flags):
        reads.append(sorted(flags))
        return read_flags(flags)

    read_flags = modeling_lrnn.read_flags
    monkeypatch.setattr(modeling_lrnn, "read_flags", recording_read)
    model = tiny_model("hlru")
    packed, padded = ids(2, 20), ids(2, 20)
    mask = torch.ones(2, 20, dtype=torch.long)
    mask[1, 15:] = 0
    model(packed, position_ids=torch.cat([torch.arange(8), torch.arange(12)])[None].expand(2, 20))
    model(padded, attention_mask=mask)
    assert len(reads) == 2, reads
    assert {"input_ids min", "input_ids max", "packed", "position_ids jump"} <= set(reads[0])
    assert reads[1] == ["attention_mask all ones", "input_ids max", "input_ids min"]
    with pytest.raises(ValueError, match=r"input_ids must lie in \[0, vocab_size"):
        model(packed + model.config.vocab_size, position_ids=torch.cat([torch.arange(8), torch.arange(12)])[None])


# ---------------------------------------------------------------------------------------------
# The public scan ops: resets with an initial state and a mask, every backend
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind,D", [("hlru", 3), ("bdlru", 4)])
@pytest.mark.parametrize("backend", ["torch", "reference", "triton"])
def test_ops_take_resets_with_initial_state_and_mask(kind, D, backend):
    """hf_lrnn.ops.{kind}_scan(..., resets=) against each document alone (the first from initial_state),
    with a mask, in h, the final state and the gradients of v, gate_logits and initial_state."""
    if backend == "triton":
        pytest.importorskip("triton")
    dtype, tol = (torch.float32, 1e-5) if backend == "triton" else (F64, 1e-10)
    lengths = [5, 1, 4, 10]  # 20 steps: the torch backend's chunked scans
    B, T = 2, sum(lengths)
    v, logits, state, mask = scan_inputs(kind, B, T, 2, D, with_state=True, with_mask=True, dtype=dtype, seed=3)
    mask[1, 5] = False  # a padding step on a document start
    resets = torch.zeros(B, T, dtype=torch.bool)
    resets[:, [0, 5, 6, 10]] = True
    scan = ops.hlru_scan if kind == "hlru" else ops.bdlru_scan
    weight = torch.randn(v.shape, dtype=dtype, generator=torch.Generator().manual_seed(4))

    def run(packed):
        x = [t.clone().requires_grad_() for t in (v, logits, state)]
        if packed:
            h, final = scan(x[0], x[1], initial_state=x[2], mask=mask, resets=resets, output_final_state=True,
                            backend=backend)
        else:
            pieces, carried = [], x[2]
            for start, stop in zip([0, 5, 6, 10], [5, 6, 10, 20]):
                piece, carried = scan(x[0][:, start:stop], x[1][:, start:stop], initial_state=carried,
                                      mask=mask[:, start:stop], output_final_state=True, backend="reference")
                pieces.append(piece)
                carried = torch.zeros_like(carried) if stop < T else carried
            h, final = torch.cat(pieces, 1), carried
        ((h * weight).sum() + final.sum()).backward()
        return [h.detach(), final.detach()] + [t.grad for t in x]

    for got, want in zip(run(True), run(False)):
        assert relative_error(got, want) < tol


def test_ops_refuse_bad_resets_naming_the_op():
    v, logits, _, _ = scan_inputs("hlru", 2, 5, 2, 2)
    with pytest.raises(ValueError, match=r"hlru_scan: resets must have shape \(B, T\)"):
        ops.hlru_scan(v, logits, resets=torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="hlru_scan: resets must be a bool tensor"):
        ops.hlru_scan(v, logits, resets=torch.zeros(2, 5, dtype=torch.long))


def test_hlru_lagged_states_refuses_bad_inputs_naming_them():
    """ops.hlru_lagged_states (the H-LRU readout, public beside the scans): bad resets, initial_state or mask
    are refused naming the tensor (once a bare "where expected condition to be a boolean tensor", a size
    mismatch or an IndexError)."""
    h = torch.randn(2, 6, 3)
    state = torch.zeros(2, 3, 2)
    resets = torch.zeros(2, 6, dtype=torch.bool)
    for mask in (None, torch.ones(2, 6, dtype=torch.bool)):
        with pytest.raises(TypeError, match="hlru_lagged_states: resets must be a bool tensor"):
            ops.hlru_lagged_states(h, state, mask, resets.long())
        with pytest.raises(ValueError, match=r"hlru_lagged_states: resets must have shape \(B, T\) = \(2, 6\)"):
            ops.hlru_lagged_states(h, state, mask, resets[0])
    with pytest.raises(ValueError, match=r"hlru_lagged_states: initial_state must have shape \(B, N, m\) = \(2, 3, m\)"):
        ops.hlru_lagged_states(h, state[:, :2], None)
    with pytest.raises(ValueError, match=r"hlru_lagged_states: mask must have shape \(B, T\) = \(2, 6\)"):
        ops.hlru_lagged_states(h, state, torch.ones(2, 5))


# ---------------------------------------------------------------------------------------------
# torch.compile and the Trainer
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mixer", ["hlru", "bdlru"])
def test_compiled_packed_batch_equals_eager(mixer):
    """torch.compile(fullgraph=True) on packed batches: the training step with position_ids (logits and
    gradients) and a forward with the collator's flash-attention keywords and an attention mask of ones."""
    model = tiny_model(mixer).double().train()
    documents = _documents(DOCUMENTS)
    batch = _collate(documents)
    weights = _weights((*batch["input_ids"].shape, model.config.vocab_size))
    eager, eager_grads = packed_outputs(model, weights, **batch)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    logits, _ = packed_outputs(compiled, weights, **batch)
    torch.testing.assert_close(logits, eager, **TOL64)
    for name, grad in _grads(model).items():
        torch.testing.assert_close(grad, eager_grads[name], **TOL64, msg=name)
    flash = _collate(documents, return_flash_attn_kwargs=True)  # and a mask of ones: compiled code keeps masks
    flash.pop("position_ids")
    flash["attention_mask"] = torch.ones_like(flash["input_ids"])
    with torch.no_grad():
        torch.testing.assert_close(compiled(**flash).logits, eager, **TOL64)


def test_trainer_with_the_flattening_collator_trains_on_documents_alone(tmp_path):
    """Trainer + DataCollatorWithFlattening, end to end: with learning rate 0 every step's loss is the loss of
    the five documents each run alone (token losses summed over the documents, over their token count); then
    three steps of ordinary training give finite losses. Weights of std 0.2 (not 0.02): far from uniform
    predictions, so that a leaking state would change the loss."""
    model = tiny_model("hybrid", initializer_range=0.2).train()
    documents = _documents(DOCUMENTS)
    with torch.no_grad():
        losses = [model(input_ids=torch.tensor([d]), labels=torch.tensor([d])).loss * (len(d) - 1)
                  for d in documents if len(d) > 1]
        expected = (sum(losses) / sum(len(d) - 1 for d in documents)).item()
        leaked = model(**DataCollatorWithFlattening()([{"input_ids": d} for d in documents]) | {"position_ids": None}).loss
    assert abs(leaked.item() - expected) > 1e-3  # the loss can tell a leaking state from a fresh one
    dataset = [{"input_ids": d} for d in documents]
    for learning_rate in (0.0, 1e-3):
        args = TrainingArguments(str(tmp_path / str(learning_rate)), max_steps=3, per_device_train_batch_size=5,
                                 learning_rate=learning_rate, logging_steps=1, use_cpu=True, report_to="none",
                                 disable_tqdm=True, save_strategy="no")
        trainer = Trainer(model=model, args=args, data_collator=DataCollatorWithFlattening(), train_dataset=dataset)
        trainer.train()
        logged = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        assert len(logged) == 3 and all(torch.isfinite(torch.tensor(logged)))
        if learning_rate == 0.0:
            assert logged == pytest.approx([expected] * 3, rel=1e-5)
