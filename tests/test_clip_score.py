"""CLIP-score of captions: the scorer against a float64 computation, and captioning fidelity reporting it.

A tiny random CLIP (and a tiny BLIP with a tokenizer, for the CLI) is saved with ``save_pretrained``
and loaded back the way a user's local checkpoints are.
"""

import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import BertTokenizer, CLIPConfig, CLIPModel, CLIPTokenizer

from nvp_export.backbone import to_unit_frames
from nvp_export.cli import main as export_main
from nvp_export.fidelity.clip_score import ClipScorer
from nvp_export.inr import load_nvp
from nvp_export.route.task_adapt import task_fidelity
from nvp_export.weights import WeightsError
from nvp_export.zoo import REDUCED
from nvp_rt.nvpfile import NvpFile
from test_task_cli import ARGS, FRAMES, _write_video

pytestmark = pytest.mark.filterwarnings("ignore::nvp_export.backbone.RandomWeightsWarning")

IMAGE_SIZE = 32
WORDS = ["a", "dog", "cat", "on", "grass", "runs", "sits", "red", "car"]


def _clip_tokenizer(directory) -> CLIPTokenizer:
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for token in [w + "</w>" for w in WORDS] + [
        c + e for c in "abcdefghijklmnopqrstuvwxyz0123456789" for e in ("", "</w>")
    ]:
        vocab.setdefault(token, len(vocab))
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"))


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    """A random CLIP with its tokenizer, saved as a user's local checkpoint directory (safetensors)."""
    root = tmp_path_factory.mktemp("clip")
    tokenizer = _clip_tokenizer(root)
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=32,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=IMAGE_SIZE,
            patch_size=8,
        ),
        projection_dim=16,
    )
    CLIPModel(config).save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    return root / "model"


@torch.no_grad()
def _reference_scores(model: CLIPModel, tokenizer, pixels: torch.Tensor, captions) -> torch.Tensor:
    """100 * max(cos, 0) in float64, on pixels already at CLIP's input size (normalised here)."""
    model = model.double()
    mean = torch.tensor((0.48145466, 0.4578275, 0.40821073), dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor((0.26862954, 0.26130258, 0.27577711), dtype=torch.float64).view(1, 3, 1, 1)
    image = model.visual_projection(model.vision_model(pixel_values=(pixels.double() - mean) / std).pooler_output)
    tokens = tokenizer(list(captions), padding=True, return_tensors="pt")
    text = model.text_projection(
        model.text_model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask).pooler_output
    )
    cos = (image * text).sum(-1) / (image.norm(dim=-1) * text.norm(dim=-1))
    return 100 * cos.clamp_min(0)


def _captions(rng, n):
    return [" ".join(rng.choice(WORDS, size=rng.integers(1, 6))) for _ in range(n)]


def test_clip_score_matches_a_float64_computation(clip_dir, rng):
    scorer = ClipScorer.load(clip_dir)
    n, pad = 12, 6
    # Frames wider than CLIP's square input: the score must see the centre crop.
    frames = torch.from_numpy(rng.random((n, 3, IMAGE_SIZE, IMAGE_SIZE + 2 * pad))).float()
    captions = _captions(rng, n)
    got = scorer.score(frames, captions)
    want = _reference_scores(
        CLIPModel.from_pretrained(clip_dir), scorer.tokenizer, frames[..., pad : pad + IMAGE_SIZE], captions
    )
    assert got.shape == (n,)
    np.testing.assert_allclose(got.double().numpy(), want.numpy(), rtol=1e-4, atol=1e-4)
    assert (got >= 0).all() and (got <= 100).all()
    # A caption's score depends on its own image: scoring against other frames changes it.
    assert not torch.allclose(got, scorer.score(frames.roll(1, 0), captions))


def test_clip_score_resizes_the_shorter_side_to_the_input_size(clip_dir, rng):
    scorer = ClipScorer.load(clip_dir)
    frames = torch.from_numpy(rng.random((2, 3, 2 * IMAGE_SIZE, 3 * IMAGE_SIZE))).float()
    x = scorer.preprocess(frames)
    assert x.shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE)
    # Shorter side 64 -> 32, width 96 -> 48, centre crop of 32: columns 8..40 of the resized frame.
    resized = F.interpolate(frames.double(), size=(IMAGE_SIZE, 48), mode="bicubic", antialias=True).clamp(0, 1)
    want = (resized[..., 8:40] - scorer.mean.double()) / scorer.std.double()
    np.testing.assert_allclose(x.double().numpy(), want.numpy(), atol=1e-5)


def test_clip_weights_that_cannot_be_used_are_one_line_errors(tmp_path):
    with pytest.raises(WeightsError, match="save_pretrained directory"):
        ClipScorer.load(tmp_path / "missing")
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"a pickle is never loaded")
    with pytest.raises(WeightsError, match="cannot load CLIP"):
        ClipScorer.load(tmp_path)


def test_caption_fidelity_reports_clip_scores_of_both_paths(clip_dir, rng):
    scorer = ClipScorer.load(clip_dir)
    backbone = type("Captioner", (), {"task": "captioning", "postprocess": staticmethod(list)})()
    frames = torch.from_numpy(rng.random((5, 3, IMAGE_SIZE, IMAGE_SIZE))).float()
    nvp, ref = _captions(rng, 5), _captions(rng, 5)
    fid = task_fidelity(backbone, nvp, ref, (IMAGE_SIZE, IMAGE_SIZE), scorer, frames)
    assert fid["clip_score"] == pytest.approx(float(scorer.score(frames, nvp).mean()), rel=1e-6)
    assert fid["clip_score_ref"] == pytest.approx(float(scorer.score(frames, ref).mean()), rel=1e-6)
    assert "clip_score" not in task_fidelity(backbone, nvp, ref, (IMAGE_SIZE, IMAGE_SIZE))


@pytest.fixture(scope="module")
def blip_dir(tmp_path_factory):
    """The reduced BLIP with a BERT tokenizer of its vocabulary, saved as a user's checkpoint: captions are text."""
    root = tmp_path_factory.mktemp("blip")
    torch.manual_seed(1)
    backbone = REDUCED["blip"]()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
    vocab += [f"{w}{i}" for i in range(20) for w in WORDS][: 100 - len(vocab)]
    vocab += ["[DEC]", "[unused]"] + [f"x{i}" for i in range(18)]  # bos 100, as the reduced config says
    (root / "vocab.txt").write_text("\n".join(vocab))
    tokenizer = BertTokenizer(str(root / "vocab.txt"), bos_token="[DEC]")
    assert len(tokenizer) == 120 and tokenizer.convert_tokens_to_ids("[DEC]") == 100
    backbone.stages["caption"].model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    return root / "model"


def test_export_clip_scores_captions_of_a_captioner_with_a_tokenizer(tmp_path, capsys, clip_dir, blip_dir):
    path = tmp_path / "clip.nvp"
    _write_video(path, FRAMES)
    argv = ["--task", "cap", str(path), *ARGS, "--weights", str(blip_dir), "--clip-weights", str(clip_dir)]
    assert export_main(argv) == 0, capsys.readouterr().err
    (route,) = NvpFile.open(path).routes()
    meta = route.metadata
    assert 0 <= meta["clip_score"] <= 100 and 0 <= meta["clip_score_ref"] <= 100
    # The reference captions come from the INR's decode (no --source): recompute their score here.
    backbone = REDUCED["blip"](blip_dir)
    with torch.no_grad():
        inr = load_nvp(path)
        frames = to_unit_frames(inr.render(range(inr.num_frames)))
        captions = backbone.postprocess(backbone(backbone.preprocess(frames)))
    assert all(isinstance(c, str) for c in captions)
    want = float(ClipScorer.load(clip_dir).score(frames, captions).mean())
    assert meta["clip_score_ref"] == pytest.approx(want, rel=1e-4)


def test_clip_weights_for_captions_that_are_not_text_is_a_one_line_error(tmp_path, capsys, clip_dir):
    path = tmp_path / "clip.nvp"
    _write_video(path, FRAMES)
    assert export_main(["--task", "cap", str(path), *ARGS, "--clip-weights", str(clip_dir)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) >= 1 and "needs text captions" in err[-1] and "Traceback" not in "".join(err)
    shutil.copy(path, tmp_path / "other.nvp")
    assert export_main(["--task", "det", str(tmp_path / "other.nvp"), *ARGS, "--clip-weights", str(clip_dir)]) == 1
    assert "scores captions" in capsys.readouterr().err
