"""LRNNConfig: validation naming the field, defaults, per-layer specs, what the configuration imports."""
import pytest

from hf_lrnn import LRNNConfig, LRNNForCausalLM


CONFIG_ERRORS = [
    (dict(mixer="lstm"), "mixer must be one of"),
    (dict(order=0), "order must be a positive int"),
    (dict(block_size=0), "block_size must be a positive int"),
    (dict(hidden_size=-1), "hidden_size must be a positive int"),
    (dict(vocab_size=0), "vocab_size must be a positive int"),
    (dict(num_hidden_layers=0), "num_hidden_layers must be a positive int"),
    (dict(intermediate_size=0), "intermediate_size must be a positive int"),
    (dict(recurrent_size=0), "recurrent_size must be a positive int"),
    (dict(mixer="bdlru", block_size=5, recurrent_size=24), r"recurrent_size \(24\) must be a multiple of block_size \(5\)"),
    (dict(gate_normalization="l2"), "gate_normalization must be one of"),
    (dict(scan_backend="cuda"), "scan_backend must be one of"),
    (dict(rms_norm_eps=0), "rms_norm_eps must be a finite number > 0"),
    (dict(initializer_range=-1.0), "initializer_range must be a finite number >= 0"),
    (dict(pad_token_id=99), r"pad_token_id must be None or an id in \[0, vocab_size"),
    (dict(bos_token_id=-1), r"bos_token_id must be None or an id in \[0, vocab_size"),
    (dict(eos_token_id=[1, 200]), "eos_token_id must be None"),
    (dict(mixer=["hlru"]), "mixer is a list of 1 layer specs but num_hidden_layers is 2"),
    (dict(mixer=["hlru", {"block_size": 2}]), r"mixer\[1\] must name its 'mixer'"),
    (dict(mixer=["hlru", {"mixer": "bdlru", "blocksize": 2}]), r"mixer\[1\] has unknown keys \['blocksize'\]"),
    (dict(mixer=["hlru", {"mixer": "bdlru", "order": 0}]), r"mixer\[1\].order must be a positive int"),
    (dict(mixer=["hlru", 3]), r"mixer\[1\] must be a mixer name"),
    (dict(mixer=7), "mixer must be one of"),
]


@pytest.mark.parametrize("kwargs,message", CONFIG_ERRORS, ids=[m for _, m in CONFIG_ERRORS])
def test_config_errors_name_the_field(kwargs, message):
    base = dict(vocab_size=37, hidden_size=24, num_hidden_layers=2)
    base.update(kwargs)
    with pytest.raises(ValueError, match=message):
        LRNNConfig(**base)


def test_config_defaults_and_layer_specs():
    config = LRNNConfig(hidden_size=128, mixer=["hlru", {"mixer": "bdlru", "block_size": 8}], order=2)
    assert config.recurrent_size == 128 and config.intermediate_size == 352  # 8d/3 rounded up to 32
    assert config.layer_specs[1] == dict(mixer="bdlru", order=2, block_size=8, recurrent_size=128, gate_normalization="softmax")
    round_trip = LRNNConfig.from_dict(config.to_dict())
    assert round_trip.layer_specs == config.layer_specs


@pytest.mark.parametrize("field, value", [("rms_norm_eps", float("nan")), ("rms_norm_eps", float("inf")),
                                          ("initializer_range", float("inf")), ("initializer_range", float("nan"))])
def test_config_rejects_nan_and_inf(field, value):
    with pytest.raises(ValueError, match=f"LRNNConfig.{field} must be a finite number"):
        LRNNConfig(**{field: value})


def test_a_config_edited_after_construction_fails_when_the_model_is_built():
    config = LRNNConfig(mixer="bdlru", hidden_size=32, block_size=4)
    config.block_size = 5
    with pytest.raises(ValueError, match="recurrent_size .* must be a multiple of block_size"):
        LRNNForCausalLM(config)
    config = LRNNConfig(order=2)
    config.order = 0
    with pytest.raises(ValueError, match="order must be a positive int"):
        LRNNForCausalLM(config)


def test_the_configuration_imports_neither_torch_nor_the_ops():
    """Loading a config (also as remote code) must not load the scan ops or the kernels."""
    import ast
    from pathlib import Path

    import hf_lrnn.configuration_lrnn as configuration

    tree = ast.parse(Path(configuration.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert imported <= {"__future__", "math", "typing", "transformers", "constants_lrnn"}, imported
