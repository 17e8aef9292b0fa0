"""decoders: the ONNX and torch backends keep their KV cache the same way and refuse what they cannot run."""
from __future__ import annotations

import numpy as np
import pytest

from mtn_sails.runtime.decoders import OnnxDecoder, TorchDecoder, load_torch_model
from mtn_sails.errors import CorruptModelError
from mtn_sails.runtime.onnx_session import ONNX_FILE, onnx_session

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_cached_steps_give_the_logits_of_one_full_pass(exported, backend):
    trained, onnx_dir, _ = exported
    decoder = (OnnxDecoder(onnx_session(onnx_dir / ONNX_FILE)) if backend == "onnx"
               else TorchDecoder(load_torch_model(trained)))
    ids = np.array([[5, 17, 42, 8, 99, 3]], dtype=np.int64)
    full = decoder.forward(ids)
    decoder.reset()
    steps = [decoder.forward(ids[:, :3])] + [decoder.forward(ids[:, i:i + 1]) for i in range(3, 6)]
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=1e-4)
    decoder.reset()
    np.testing.assert_allclose(decoder.forward(ids[:, :2]), full[:, :2], atol=1e-4)  # reset forgot the cache


def test_a_graph_without_a_kv_cache_is_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("Cast", ["input_ids"], ["logits"], to=TensorProto.FLOAT)
    graph = helper.make_graph([node], "no_cache",
                              [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, "n"])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, "n"])])
    path = tmp_path / "no_cache.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    with pytest.raises(ValueError, match="KV cache"):
        OnnxDecoder(onnx_session(path))


def test_truncated_weights_are_a_corrupt_model_error(tiny_model_copy):
    weights = tiny_model_copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CorruptModelError):
        load_torch_model(tiny_model_copy)
