"""Whisper: the CTranslate2 reader, the real tiny.en weights against Hugging Face, decoding, the twin, the CLI.

* The reader on crafted files (a small Whisper written in CTranslate2's format here, truncated, foreign,
  trailing bytes, a bad dtype, a non-zero key bias) and the loader's checks (no package, a changed file).
* tiny.en in float64 (the file's float16 values upcast on both sides): our encoder output and logits against
  ``transformers.WhisperForConditionalGeneration`` loaded with the same weights; greedy tokens identical on a
  short espeak-ng clip (skipped without espeak-ng); one fine-tuning step against the twin's gradients.
* The NumPy model against its twin (random small config) and the KV-cache stepper against the full prefix.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import struct
import time
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pytest
import torch

from numpy_transformer.applications import speech
from numpy_transformer.applications import whisper_weights as ww
from numpy_transformer.applications.pretrained import PretrainedLoadError
from numpy_transformer.commands import main
from numpy_transformer.config import WhisperConfig
from numpy_transformer.functional.softmax import cross_entropy_backward, cross_entropy_forward
from numpy_transformer.inference.search import greedy_decode
from numpy_transformer.models.whisper import WhisperDecoder, WhisperForConditionalGeneration, whisper_sinusoids
from numpy_transformer.optim.sgd import SGD
from parity_tests.helpers import assert_matches
from torch_transformer import functional as TF
from torch_transformer import whisper as tw

HAS_WEIGHTS = importlib.util.find_spec(ww.WHISPER_PACKAGE) is not None
needs_weights = pytest.mark.skipif(not HAS_WEIGHTS, reason=f"Whisper tiny.en is not installed: {ww.WHISPER_INSTALL}")
needs_espeak = pytest.mark.skipif(not speech.espeak_available(), reason="espeak-ng is not installed (apt-get install)")
SENTENCE = "Please call me back after lunch."

SMALL = WhisperConfig(
    vocab_size=30, num_mel_bins=4, d_model=8, encoder_layers=1, decoder_layers=2, encoder_attention_heads=2,
    decoder_attention_heads=2, encoder_ffn_dim=12, decoder_ffn_dim=16, max_source_positions=4,
    max_target_positions=8, decoder_start_token_id=28, eos_token_id=29,
)  # fmt: skip


# ---------------------------------------------------------------------------- a CTranslate2 writer (tests only)


def _string(s: str) -> bytes:
    raw = s.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def _ct2_bytes(variables: dict[str, np.ndarray], aliases: dict[str, str], spec="WhisperSpec", version=6) -> bytes:
    ids = {np.dtype(np.float32): 0, np.dtype(np.int8): 1, np.dtype(np.int16): 2, np.dtype(np.int32): 3,
           np.dtype(np.float16): 4}  # fmt: skip
    out = [struct.pack("<I", version), _string(spec), struct.pack("<II", 3, len(variables))]
    for name, a in variables.items():
        out += [_string(name), struct.pack("<B", a.ndim), struct.pack("<" + "I" * a.ndim, *a.shape)]
        out += [struct.pack("<BI", ids[a.dtype], a.nbytes), a.tobytes()]
    out.append(struct.pack("<I", len(aliases)))
    out += [_string(k) + _string(v) for k, v in aliases.items()]
    return b"".join(out)


def _whisper_as_ct2(model: WhisperForConditionalGeneration) -> dict[str, np.ndarray]:
    """Our model's parameters under CTranslate2's names, q|k|v and k|v fused (a zero key bias), float16."""
    sd, C, v = model.state_dict(), model.config.d_model, {}
    f16 = np.float16

    def lin(ct2, ours, bias=True):
        v[f"{ct2}/weight"] = sd[f"{ours}.weight"].astype(f16)
        if bias:
            v[f"{ct2}/bias"] = sd[f"{ours}.bias"].astype(f16)

    def norm(ct2, ours):
        v[f"{ct2}/gamma"], v[f"{ct2}/beta"] = sd[f"{ours}.weight"].astype(f16), sd[f"{ours}.bias"].astype(f16)

    def fused(ct2, ours, names):
        v[f"{ct2}/weight"] = np.concatenate([sd[f"{ours}.{n}_proj.weight"] for n in names]).astype(f16)
        v[f"{ct2}/bias"] = np.concatenate(
            [np.zeros(C) if n == "k" else sd[f"{ours}.{n}_proj.bias"] for n in names]
        ).astype(f16)

    v["decoder/num_heads"] = np.array(model.config.decoder_attention_heads, np.int16)
    v["decoder/pre_norm"] = np.array(1, np.int8)
    v["decoder/embeddings/weight"] = sd["decoder.embed_tokens"].astype(f16)
    v["decoder/position_encodings/encodings"] = sd["decoder.embed_positions"].astype(f16)
    for i in range(model.config.decoder_layers):
        p, o = f"decoder/layer_{i}", f"decoder.layers.{i}"
        fused(f"{p}/self_attention/linear_0", f"{o}.self_attn", "qkv")
        lin(f"{p}/self_attention/linear_1", f"{o}.self_attn.out_proj")
        norm(f"{p}/self_attention/layer_norm", f"{o}.norm1")
        lin(f"{p}/attention/linear_0", f"{o}.cross_attn.q_proj")
        fused(f"{p}/attention/linear_1", f"{o}.cross_attn", "kv")
        lin(f"{p}/attention/linear_2", f"{o}.cross_attn.out_proj")
        norm(f"{p}/attention/layer_norm", f"{o}.norm2")
        lin(f"{p}/ffn/linear_0", f"{o}.ff.linear1")
        lin(f"{p}/ffn/linear_1", f"{o}.ff.linear2")
        norm(f"{p}/ffn/layer_norm", f"{o}.norm3")
    norm("decoder/layer_norm", "decoder.norm")
    v["encoder/num_heads"] = np.array(model.config.encoder_attention_heads, np.int16)
    lin("encoder/conv1", "encoder.conv1")
    lin("encoder/conv2", "encoder.conv2")
    v["encoder/position_encodings/encodings"] = model.encoder.embed_positions.astype(f16)
    for i in range(model.config.encoder_layers):
        p, o = f"encoder/layer_{i}", f"encoder.layers.{i}"
        fused(f"{p}/self_attention/linear_0", f"{o}.self_attn", "qkv")
        lin(f"{p}/self_attention/linear_1", f"{o}.self_attn.out_proj")
        norm(f"{p}/self_attention/layer_norm", f"{o}.norm1")
        lin(f"{p}/ffn/linear_0", f"{o}.ff.linear1")
        lin(f"{p}/ffn/linear_1", f"{o}.ff.linear2")
        norm(f"{p}/ffn/layer_norm", f"{o}.norm2")
    norm("encoder/layer_norm", "encoder.norm")
    return v


ALIASES = {"decoder/projection/weight": "decoder/embeddings/weight"}


def _small_model(seed=0, dtype=np.float64):
    model = WhisperForConditionalGeneration(SMALL, dtype, np.random.default_rng(seed))
    rng = np.random.default_rng(seed + 1)
    model.load_state_dict({n: (p + 0.3 * rng.standard_normal(p.shape)).astype(dtype)
                           for n, p in model.named_parameters()})  # fmt: skip
    return model.eval()


def test_ctranslate2_reader_reads_a_crafted_whisper_and_splits_it_into_our_keys(tmp_path):
    model = _small_model()
    path = tmp_path / "model.bin"
    path.write_bytes(_ct2_bytes(_whisper_as_ct2(model), ALIASES))
    ct2 = ww.read_ctranslate2(path)
    assert ct2.version == 6 and ct2.spec == "WhisperSpec" and ct2.aliases == ALIASES
    config = ww.whisper_config_from_ct2(ct2, 28, 29)
    assert config.d_model == SMALL.d_model and config.decoder_layers == 2 and config.vocab_size == 30
    state, positions = ww.whisper_state_dict_from_ct2(ct2, config, np.float64)
    assert set(state) == {n for n, _ in model.named_parameters()}
    for name, p in model.named_parameters():
        np.testing.assert_array_equal(state[name], p.astype(np.float16).astype(np.float64), err_msg=name)
    np.testing.assert_array_equal(positions, model.encoder.embed_positions.astype(np.float16))


def test_ctranslate2_reader_refuses_truncated_foreign_and_inconsistent_files(tmp_path):
    variables = _whisper_as_ct2(_small_model())
    good = _ct2_bytes(variables, ALIASES)
    path = tmp_path / "model.bin"
    for cut in (3, 20, len(good) // 2, len(good) - 1):
        path.write_bytes(good[:cut])
        with pytest.raises(PretrainedLoadError, match="truncated"):
            ww.read_ctranslate2(path)
    path.write_bytes(good + b"\0\0")
    with pytest.raises(PretrainedLoadError, match="2 bytes after the end"):
        ww.read_ctranslate2(path)
    path.write_bytes(b"PK\x03\x04 this is a zip file, not a model" * 4)
    with pytest.raises(PretrainedLoadError, match="not a CTranslate2 model of format version 6"):
        ww.read_ctranslate2(path)
    path.write_bytes(_ct2_bytes(variables, ALIASES, spec="TransformerSpec"))
    with pytest.raises(PretrainedLoadError, match="'TransformerSpec', expected 'WhisperSpec'"):
        ww.read_ctranslate2(path)
    bad = good.replace(struct.pack("<BI", 4, 8 * 2), struct.pack("<BI", 9, 8 * 2), 1)  # a (8,) float16 tensor
    path.write_bytes(bad)
    with pytest.raises(PretrainedLoadError, match="dtype id 9"):
        ww.read_ctranslate2(path)
    path.write_bytes(_ct2_bytes(variables, {"decoder/projection/weight": "decoder/nothing"}))
    with pytest.raises(PretrainedLoadError, match="which is not a variable"):
        ww.read_ctranslate2(path)
    key = "encoder/layer_0/self_attention/linear_0/bias"
    biased = {**variables, key: variables[key] + np.float16(1)}
    path.write_bytes(_ct2_bytes(biased, ALIASES))
    ct2 = ww.read_ctranslate2(path)
    with pytest.raises(PretrainedLoadError, match="the key slice is not zero"):
        ww.whisper_state_dict_from_ct2(ct2, ww.whisper_config_from_ct2(ct2, 28, 29))


def test_load_whisper_without_the_package_names_the_pip_command(monkeypatch):
    monkeypatch.setattr(ww.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match=re.escape(ww.WHISPER_INSTALL)):
        ww.load_whisper_tiny_en()


@needs_weights
def test_load_whisper_refuses_a_changed_file(tmp_path, monkeypatch):
    copy = tmp_path / "model"
    shutil.copytree(ww.whisper_dir(), copy)
    config = copy / "config.json"
    config.write_bytes(config.read_bytes().replace(b"[", b"[ ", 1))
    monkeypatch.setattr(ww, "whisper_dir", lambda: copy)
    with pytest.raises(PretrainedLoadError, match=r"config\.json: \d+ bytes, expected") as exc:
        ww.load_whisper_tiny_en()
    assert ww.WHISPER_INSTALL in str(exc.value) and "minilm" not in str(exc.value)


# ---------------------------------------------------------------------------- the twin and the stepper


def test_whisper_matches_its_twin_forward_loss_and_every_gradient():
    model = _small_model(3)
    twin = tw.WhisperForConditionalGeneration(SMALL)
    twin.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in model.state_dict().items()})
    rng = np.random.default_rng(5)
    mel = rng.standard_normal((2, SMALL.num_mel_bins, SMALL.n_frames))
    ids = rng.integers(0, SMALL.vocab_size, (2, 6))
    labels = np.where(rng.random((2, 6)) < 0.2, -100, rng.integers(0, SMALL.vocab_size, (2, 6)))
    mel_t = torch.from_numpy(mel.copy()).requires_grad_(True)
    logits_t, loss_t, memory_t = twin(mel_t, ids, labels)
    out, cache = model.forward(mel, ids, labels)
    assert_matches("memory", out.encoder_last_hidden_state, memory_t, np.float64)
    assert_matches("logits", out.logits, logits_t, np.float64)
    assert_matches("loss", out.loss, loss_t, np.float64)
    dlogits = rng.standard_normal(out.logits.shape)
    (logits_t * torch.from_numpy(dlogits)).sum().add(0.7 * loss_t).backward()
    dmel = model.backward(dlogits, cache) + model.backward(None, cache, dloss=0.7)
    assert_matches("d input_features", dmel, mel_t.grad, np.float64)
    params = dict(twin.named_parameters())
    for name, grad in model.named_grads():
        assert_matches(f"d{name}", grad, params[name].grad, np.float64)


def test_kv_cache_stepper_gives_the_full_prefix_tokens_and_logits():
    model = _small_model(7)
    steps = speech.WhisperStepping(model, prompt=(28,), suppress_ids=(0, 1), suppress_ids_begin=(29,))
    mel = np.random.default_rng(8).standard_normal((3, SMALL.num_mel_bins, SMALL.n_frames))
    cached = greedy_decode(steps, mel, max_len=6, bos_id=27, eos_id=29, use_cache=True)
    full = greedy_decode(steps, mel, max_len=6, bos_id=27, eos_id=29, use_cache=False)
    np.testing.assert_array_equal(cached.tokens, full.tokens)
    finite = np.isfinite(full.logits)
    np.testing.assert_array_equal(finite, np.isfinite(cached.logits))
    assert_matches("cached logits", cached.logits[finite], full.logits[finite], np.float64)
    assert_matches("cached cross-attention", cached.cross_attention, full.cross_attention, np.float64)
    assert not np.isin(cached.tokens[:, 1:], (0, 1, 28)).any() and (cached.tokens[:, 1] != 29).all()
    # the logits at every step are the model's own on the whole sequence, suppressions aside
    ids = np.concatenate([np.full((3, 1), 28), cached.tokens[:, :-1]], axis=1)
    out, _ = model.forward(mel, ids)
    ok = np.isfinite(cached.logits)
    assert_matches("step logits vs forward", cached.logits[ok], out.logits[:, 1:][ok], np.float64)


# ---------------------------------------------------------------------------- the real weights


@pytest.fixture(scope="module")
def tiny64():
    if not HAS_WEIGHTS:
        pytest.skip(f"Whisper tiny.en is not installed: {ww.WHISPER_INSTALL}")
    return ww.load_whisper_tiny_en(np.float64)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    if not speech.espeak_available():
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    samples, rate = speech.read_wav(speech.synthesize(SENTENCE, tmp_path_factory.mktemp("speech") / "clip.wav"))
    return speech.resample(samples, rate)


@pytest.fixture(scope="module")
def hf_tiny(tiny64):
    transformers = pytest.importorskip("transformers")
    hf_cfg = transformers.WhisperConfig(**ww.whisper_config_to_hf(tiny64.config), attn_implementation="eager")
    hf = transformers.WhisperForConditionalGeneration(hf_cfg).double().eval()
    hf.load_state_dict(
        {k: torch.from_numpy(np.asarray(v)) for k, v in ww.whisper_state_dict_to_hf(tiny64.model).items()}
    )
    return hf


@pytest.fixture(scope="module")
def tiny_memory(tiny64, clip):
    """The clip's log-mel (1, 80, 3000) and tiny.en's encoder output for it (1, 1500, 384), float64, computed once."""
    mel = speech.audio_to_log_mel(clip, np.float64)
    memory, _ = tiny64.model.encoder.forward(mel)
    return mel, memory


@needs_weights
def test_tiny_en_file_holds_whisper_sinusoids_and_tiny_en_shapes(tiny64):
    ct2 = ww.read_ctranslate2(tiny64.model_dir / "model.bin")
    assert len(ct2.variables) == 148 and ct2.aliases == ALIASES and tiny64.config == WhisperConfig()
    positions = ct2.variables["encoder/position_encodings/encodings"]
    # OpenAI's sinusoids, stored in float16: within one float16 step of the exact values (|x| <= 1: 2^-11)
    exact = whisper_sinusoids(1500, 384)
    assert np.all(np.abs(positions.astype(np.float64) - exact) <= np.spacing(np.abs(exact).astype(np.float16)))
    assert ww.sinusoids_match(positions) < 2**-11


@needs_weights
@needs_espeak
def test_tiny_en_encoder_logits_and_greedy_tokens_match_hf(tiny64, hf_tiny, clip, tiny_memory):
    mel, memory = tiny_memory
    with torch.no_grad():
        memory_hf = hf_tiny.model.encoder(torch.from_numpy(mel)).last_hidden_state
    assert_matches("tiny.en encoder output", memory, memory_hf, np.float64)
    # HF's greedy tokens, with the same suppressions, from its own encoder output
    steps = speech.whisper_stepping(tiny64)
    tokens = [tiny64.token_id(speech.SOT), tiny64.token_id(speech.NO_TIMESTAMPS)]
    eot = tiny64.token_id(speech.EOT)
    with torch.no_grad():
        while tokens[-1] != eot and len(tokens) < 40:
            logits = hf_tiny.model.decoder(input_ids=torch.tensor([tokens]), encoder_hidden_states=memory_hf)
            logits = hf_tiny.proj_out(logits.last_hidden_state)[0, -1].numpy()
            tokens.append(int(steps.suppress(logits[None], first_choice=len(tokens) == 2)[0].argmax()))
    logits_ours, _ = tiny64.model.decoder.forward(np.array([tokens]), memory)
    with torch.no_grad():
        hidden = hf_tiny.model.decoder(input_ids=torch.tensor([tokens]), encoder_hidden_states=memory_hf)
        logits_hf = hf_tiny.proj_out(hidden.last_hidden_state)
    assert_matches("tiny.en logits", logits_ours, logits_hf, np.float64)
    # ours: the KV-cache stepper driven by numpy_transformer.inference's greedy search (on the memory above)
    result = greedy_decode(_GivenMemory(steps, memory), mel, max_len=40, bos_id=tokens[1], eos_id=eot)
    ours = result.tokens[0, : 1 + int(result.lengths[0])]
    assert ours.tolist() == tokens[1:], (ours, tokens)
    text = tiny64.tokenizer.decode(tokens, skip_special_tokens=True)
    assert speech.word_error_rate([SENTENCE], [text]) == 0.0, text
    assert result.cross_attention.shape == (1, 8, len(tokens) - 2, 1500)  # tiny.en's 8 alignment heads


@dataclass(frozen=True)
class _GivenMemory(speech.WhisperStepping):
    """The pretrained stepping with the encoder output already computed (the test has it: no second encoder run)."""

    memory: np.ndarray | None = None

    def __init__(self, steps: speech.WhisperStepping, memory: np.ndarray) -> None:
        object.__setattr__(self, "memory", memory)
        for f in fields(speech.WhisperStepping):
            object.__setattr__(self, f.name, getattr(steps, f.name))

    def start(self, src, copies, capacity, use_cache):
        return speech.WhisperStepper(self, self.memory, capacity)


@needs_weights
@needs_espeak
def test_tiny_en_decoder_fine_tuning_step_matches_the_twin(tiny64, tiny_memory):
    """One step on the decoder's cross-entropy of a transcript, the encoder frozen (its output given): every
    decoder gradient and the memory's against the twin's autograd, then the SGD update. (The encoder's backward
    is checked against HF and the twin on random weights; on tiny.en it costs ~25 s, see the README.)"""
    _, memory = tiny_memory
    decoder = WhisperDecoder(tiny64.config, np.float64, np.random.default_rng(0))
    decoder.load_state_dict(
        {k[len("decoder.") :]: v for k, v in tiny64.model.state_dict().items() if k.startswith("decoder.")}
    )  # fmt: skip  (a copy: the step below changes it)
    text = tiny64.tokenizer.encode(" Please call me back later.", add_special_tokens=False).ids
    ids = np.array([[tiny64.token_id(speech.SOT), tiny64.token_id(speech.NO_TIMESTAMPS), *text]])
    labels = np.concatenate([ids[:, 1:], [[tiny64.token_id(speech.EOT)]]], axis=1)
    labels[0, 0] = -100  # <|notimestamps|> is given, not learned
    twin = tw.WhisperDecoder(tiny64.config)
    twin.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in decoder.state_dict().items()})
    start = time.perf_counter()
    decoder.train().zero_grad()
    logits, cache = decoder.forward(ids, memory)
    loss, c_loss = cross_entropy_forward(logits[0], labels[0])
    dmemory = decoder.backward(cross_entropy_backward(np.float64(1.0), c_loss)[None], cache)
    seconds = time.perf_counter() - start
    memory_t = torch.from_numpy(memory.copy()).requires_grad_(True)
    loss_t = TF.cross_entropy(twin(ids, memory_t)[0], torch.from_numpy(labels[0]))
    loss_t.backward()
    assert_matches("loss", loss, loss_t, np.float64)
    assert_matches("d memory", dmemory, memory_t.grad, np.float64)
    params = dict(twin.named_parameters())
    for name, grad in decoder.named_grads():
        assert_matches(f"d decoder.{name}", grad, params[name].grad, np.float64)
    before = decoder.embed_tokens.copy()
    SGD(decoder, lr=1e-3).step()
    np.testing.assert_array_equal(decoder.embed_tokens, before - 1e-3 * decoder.grads["embed_tokens"])
    after, _ = cross_entropy_forward(decoder.forward(ids, memory)[0][0], labels[0])
    assert after < loss, (float(after), float(loss))
    print(f"tiny.en decoder fine-tuning step (forward + backward, float64): {seconds:.2f} s")


# ---------------------------------------------------------------------------- the command


def test_transcribe_command_errors_exit_2(tmp_path, capsys, monkeypatch):
    not_wav = tmp_path / "x.wav"
    not_wav.write_text("not audio")
    cases = (
        (["transcribe", str(tmp_path / "nope.wav")], "no such file"),
        (["transcribe"], "expected at least one FILE.wav"),
        (["transcribe", str(not_wav), "--png", str(tmp_path / "a.jpg")], "expected a .png file"),
    )
    for argv, message in cases:
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2 and message in capsys.readouterr().err
    if HAS_WEIGHTS:
        with pytest.raises(SystemExit) as exc:
            main(["transcribe", str(not_wav)])
        assert exc.value.code == 2 and "not a PCM WAV file" in capsys.readouterr().err
    from numpy_transformer.commands import transcribe

    monkeypatch.setattr(transcribe, "is_installed", lambda module: module != ww.WHISPER_PACKAGE)
    with pytest.raises(SystemExit) as exc:
        main(["transcribe", str(not_wav)])
    assert exc.value.code == 2 and ww.WHISPER_INSTALL in capsys.readouterr().err


def test_read_wav_reads_pcm_widths_and_channels(tmp_path):
    import wave

    rng = np.random.default_rng(0)
    x = rng.uniform(-0.9, 0.9, (50, 2))
    path = tmp_path / "stereo.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(np.round(x * 32767).astype("<i2").tobytes())
    samples, rate = speech.read_wav(path)
    assert rate == 8000 and samples.shape == (50,)
    np.testing.assert_allclose(samples, x.mean(axis=1), atol=1e-4)
    assert speech.resample(samples, 8000).shape == (100,)
    assert speech.word_errors("The cat sat.", "the cat sat on") == (1, 3)
    assert speech.word_error_rate(["a b", "c d"], ["a b", "x"]) == 0.5
    assert isinstance(Path(path), Path)


def test_changing_a_later_token_changes_no_earlier_logit_and_no_decoder_layer_reads_no_audio():
    model = _small_model(11)
    rng = np.random.default_rng(12)
    mel = rng.standard_normal((1, SMALL.num_mel_bins, SMALL.n_frames))
    ids = rng.integers(0, SMALL.vocab_size, (1, 6))
    other = ids.copy()
    other[0, 4] = (ids[0, 4] + 1) % SMALL.vocab_size
    a, _ = model.forward(mel, ids)
    b, _ = model.forward(mel, other)
    np.testing.assert_array_equal(a.logits[:, :4], b.logits[:, :4])
    assert np.abs(a.logits[:, 4:] - b.logits[:, 4:]).max() > 1e-6
    # without decoder layers the logits never read the audio: its gradient is exactly zero
    no_layers = WhisperForConditionalGeneration(
        WhisperConfig(**{**SMALL.__dict__, "decoder_layers": 0}), np.float64, np.random.default_rng(0)
    )
    out, cache = no_layers.forward(mel, ids)
    assert not no_layers.backward(rng.standard_normal(out.logits.shape), cache).any()
