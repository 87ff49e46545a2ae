"""Everything of the LRNN models that depends on transformers' private hooks or on its version, in one place.

- ``CACHE_FIELD``: transformers 5.24 renamed the outputs' and the generation loop's ``past_key_values`` to
  ``cache``; the models accept both names as forward arguments (``pick_cache``) and fill the field this
  version uses in their outputs.
- :class:`LRNNGenerationMixin`: the ``GenerationMixin`` hooks that make ``generate()`` use an
  :class:`~.cache_lrnn.LRNNCache` (``_supports_default_dynamic_cache``, ``_prepare_cache_for_generation``),
  feed the recurrent model only the positions its cache has not seen (``prepare_inputs_for_generation``),
  compile the decode step (``get_compiled_call``, ``_default_compile_config``) and check the prompt's token
  ids once (``generate``).
"""
from __future__ import annotations

import contextvars
from typing import Optional

import torch
from transformers import GenerationMixin
from transformers.modeling_outputs import CausalLMOutputWithPast

from .cache_lrnn import LRNNCache
from .packing_lrnn import BOUNDARY_KWARGS, LENGTH_KWARGS, first_document_start

CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"
# Keyword arguments prepare_inputs_for_generation drops, as the model does not use them (positions: it has no
# positional embeddings; labels: transformers' default drops them too). Every other one reaches forward().
UNUSED_GENERATION_KWARGS = ("cache_position", "position_ids", "labels")
# Keyword arguments that only describe the documents of packed rows, which generate() does not take.
PACKING_KWARGS = tuple(name for name in BOUNDARY_KWARGS + LENGTH_KWARGS if name != "position_ids")
# True inside a generate() call of this thread (and context): the prompt's ids were checked once, and later
# steps feed the model its own samples, so forward() skips the range check (a host sync per step on GPUs).
# A context variable, not a model attribute: overlapping generate() calls in other threads do not see it.
GENERATE_CHECKED_TOKEN_IDS = contextvars.ContextVar("lrnn_generate_checked_token_ids", default=False)


def pick_cache(cache: Optional[LRNNCache], past_key_values: Optional[LRNNCache]) -> Optional[LRNNCache]:
    """The cache passed as ``cache`` (transformers >= 5.24) or ``past_key_values`` (earlier)."""
    if cache is not None and past_key_values is not None:
        raise ValueError("pass the recurrent cache as either `cache` or `past_key_values`, not both")
    cache = cache if cache is not None else past_key_values
    if cache is not None and not isinstance(cache, LRNNCache):
        raise TypeError(
            f"the cache must be an LRNNCache (from a previous forward or LRNNCache(config, batch_size, device)), "
            f"got {type(cache).__name__}"
        )
    return cache


def check_token_ids(input_ids: torch.Tensor, vocab_size: int) -> None:
    """ValueError unless every id lies in [0, vocab_size) (reads the values: one host sync on GPUs)."""
    if input_ids.numel() == 0:
        return
    check_token_id_range(*torch.stack(torch.aminmax(input_ids)).tolist(), vocab_size)


def check_token_id_range(low: int, high: int, vocab_size: int) -> None:
    """ValueError unless the token ids' range [low, high] lies in [0, vocab_size)."""
    if low < 0 or high >= vocab_size:
        raise ValueError(f"input_ids must lie in [0, vocab_size={vocab_size}), got values in [{low}, {high}]")


class LRNNGenerationMixin(GenerationMixin):
    """transformers' ``GenerationMixin`` with the hooks a recurrent model needs (module docstring). Listed
    before the ``PreTrainedModel`` base, so that its ``get_compiled_call`` takes precedence."""

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # generate() gets an LRNNCache from _prepare_cache_for_generation

    def _prepare_cache_for_generation(self, generation_config, model_kwargs, generation_mode, batch_size, max_cache_length):
        """generate(): an LRNNCache made before the prefill, so that transformers' auto-compile sees a
        compileable cache (``cache_implementation`` None or "static"; "dynamic" decodes eagerly)."""
        user_cache = model_kwargs.get(CACHE_FIELD)
        rows = max(generation_config.num_beams or 1, generation_config.num_return_sequences or 1) * batch_size
        if user_cache is not None:
            pick_cache(user_cache, None)
            if generation_config.cache_implementation is not None:
                raise ValueError("pass either a cache or cache_implementation to generate(), not both")
            if user_cache.batch_size != rows and rows != batch_size:
                raise ValueError(
                    f"generate(): the cache passed holds states for batch size {user_cache.batch_size}, but "
                    f"{batch_size} prompt(s) x {rows // batch_size} beams or return sequences need {rows} rows "
                    f"(one state per beam: LRNNCache(config, batch_size={rows}, device))"
                )
            return
        if generation_config.use_cache is False:
            return
        implementation = generation_config.cache_implementation
        if implementation not in (None, "static", "dynamic"):
            raise ValueError(
                f"cache_implementation={implementation!r} does not apply to a recurrent model: use None or 'static' "
                "(a fixed-size state, compiled decode step on CUDA) or 'dynamic' (eager decode steps)"
            )
        model_kwargs[CACHE_FIELD] = LRNNCache(self.config, batch_size=rows, device=self.device,
                                              compileable=implementation != "dynamic")

    def prepare_inputs_for_generation(self, input_ids, next_sequence_length=None, attention_mask=None,
                                      inputs_embeds=None, is_first_iteration=False, **kwargs):
        """Feed only what the cache has not seen: the new token in decode steps; on the first call with a
        cache that already holds a history (continuing a generation with the full ids or embeddings), the
        positions past ``cache.get_seq_length()``. Every other keyword argument is passed on to forward()
        (as transformers' default does), except those the model does not use (``UNUSED_GENERATION_KWARGS``)."""
        cache = kwargs.pop(CACHE_FIELD, None)
        for key in UNUSED_GENERATION_KWARGS:
            kwargs.pop(key, None)
        seen = cache.get_seq_length() if cache is not None and next_sequence_length is None else 0
        model_inputs = {"attention_mask": attention_mask, CACHE_FIELD: cache, "use_cache": kwargs.pop("use_cache", True)}
        if inputs_embeds is not None and is_first_iteration:
            model_inputs["inputs_embeds"] = inputs_embeds[:, seen:] if next_sequence_length is None else inputs_embeds[:, -next_sequence_length:]
            model_inputs["input_ids"] = None
        else:
            new = input_ids[:, seen:] if next_sequence_length is None else input_ids[:, -next_sequence_length:]
            # A copy with its own strides: a slice of the growing sequence has a new row stride every step, which
            # a compiled decode step would take as a new input layout (a recompile or CUDA-graph recording per token);
            # .contiguous() does not copy a (B, 1) slice.
            model_inputs["input_ids"] = new.clone(memory_format=torch.contiguous_format)
        fed = model_inputs["input_ids"] if model_inputs["input_ids"] is not None else model_inputs["inputs_embeds"]
        if fed.shape[1] == 0:
            if seen == 0:
                raise ValueError("generate(): the prompt is empty; pass at least one token (e.g. the BOS token)")
            raise ValueError(f"generate(): the cache passed has already seen all {seen} positions of the input; "
                             "pass at least one new token")
        if attention_mask is not None:  # only the new positions' columns: a fixed shape and strides for the compiled step
            model_inputs["attention_mask"] = attention_mask[:, -fed.shape[1]:].clone(memory_format=torch.contiguous_format)
        model_inputs.update(kwargs)
        return model_inputs

    def get_compiled_call(self, compile_config):
        """generate()'s compiled decode step: the forward from token ids to the last logits, compiled with
        ``compile_config`` (CUDA graphs under transformers' default "reduce-overhead"), and the output object
        built outside the compiled region. Steps with other inputs (embeddings, hidden states) run eagerly.
        The compiled function and its config are kept where transformers keeps them (``_compiled_call``,
        ``_last_compile_config``), which its tests read as the record that generate() compiled the model."""
        compile_config = compile_config or self._default_compile_config()
        if getattr(self, "_last_compile_config", None) != compile_config:
            self._last_compile_config = compile_config
            self._compiled_call = torch.compile(self._decode_logits, **compile_config.to_dict())

        def decode_step(input_ids=None, attention_mask=None, use_cache=True, return_dict=True, logits_to_keep=1, **rest):
            cache = rest.pop(CACHE_FIELD, None)
            if input_ids is None or cache is None or rest or not use_cache or logits_to_keep != 1:
                return self(input_ids=input_ids, attention_mask=attention_mask, use_cache=use_cache,
                            return_dict=return_dict, logits_to_keep=logits_to_keep, **{CACHE_FIELD: cache}, **rest)
            if compile_config.mode == "reduce-overhead":
                torch.compiler.cudagraph_mark_step_begin()
            logits = self._compiled_call(input_ids, attention_mask, cache).clone()  # the graph reuses its output
            return CausalLMOutputWithPast(logits=logits, **{CACHE_FIELD: cache})

        return decode_step

    def _decode_logits(self, input_ids, attention_mask, cache):
        return self(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=1, **{CACHE_FIELD: cache}).logits

    @torch.no_grad()
    def generate(self, inputs: Optional[torch.Tensor] = None, *args, **kwargs):
        """transformers' generate(), with the prompt's token ids (``inputs`` or ``input_ids``) checked once here
        instead of at every step, and packed prompts refused (:func:`refuse_packed_prompt`)."""
        prompt = inputs if inputs is not None else kwargs.get("input_ids")
        if isinstance(prompt, torch.Tensor) and not prompt.dtype.is_floating_point:
            check_token_ids(prompt, self.config.vocab_size)
        refuse_packed_prompt(prompt if prompt is not None else kwargs.get("inputs_embeds"), kwargs)
        token = GENERATE_CHECKED_TOKEN_IDS.set(True)
        try:
            return super().generate(inputs, *args, **kwargs)
        finally:
            GENERATE_CHECKED_TOKEN_IDS.reset(token)


def refuse_packed_prompt(prompt: Optional[torch.Tensor], kwargs: dict) -> None:
    """ValueError naming the argument where generate()'s keyword arguments describe documents packed into a
    prompt's rows: generate() continues one sequence per row, and prepare_inputs_for_generation drops
    ``position_ids`` (the model has no positional embeddings), so the state would silently run from one
    document into the next. Refused: any of ``PACKING_KWARGS``; ``position_ids`` (checked against the prompt
    (B, T[, d]) and ``attention_mask``, one host sync) that restart at 0 after a row's first real position, or
    that the model's forward refuses. Plain, offset and left-padded position ids pass."""
    given = [name for name in PACKING_KWARGS if kwargs.get(name) is not None]
    if given:
        raise ValueError(f"generate(): {', '.join(given)} describe(s) documents packed into one row, which generate() "
                         "does not take (it continues one sequence per row): generate from each document alone")
    position_ids = kwargs.get("position_ids")
    if position_ids is None or not isinstance(prompt, torch.Tensor) or prompt.dim() < 2:
        return
    start = first_document_start(*prompt.shape[:2], prompt.device, kwargs.get("attention_mask"),
                                 position_ids=position_ids)
    if start is not None:
        b, t = start
        raise ValueError(
            f"generate(): position_ids restart at 0 at row {b}, position {t}: they mark documents packed into one "
            "row, which generate() does not take (it continues one sequence per row, and the state would run from "
            "one document into the next): generate from each document alone"
        )
