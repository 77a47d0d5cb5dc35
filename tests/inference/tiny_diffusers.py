"""Tiny randomly initialised diffusers pipelines, saved to a folder as a real model would be.

The diffusers backend's tests and its benchmark (bench/inference_diffusers.py) load these with
the backend's own loading code, so nothing here may be needed at load time: each folder is a
complete `save_pretrained` output, tokenizer files included. The weights are random (seeded),
so the outputs are noise, but of the real shapes, lengths and formats.

Only torch, diffusers and transformers are imported: the benchmark runs this on machines that
have nothing else of the project's dependencies.
"""

import json
from pathlib import Path

import torch
from diffusers import (
    AudioLDMPipeline,
    AutoencoderKL,
    AutoencoderKLTemporalDecoder,
    DDIMScheduler,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableVideoDiffusionPipeline,
    UNet2DConditionModel,
    UNetSpatioTemporalConditionModel,
)
from transformers import (
    ClapTextConfig,
    ClapTextModelWithProjection,
    CLIPImageProcessor,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
    RobertaTokenizer,
    SpeechT5HifiGan,
    SpeechT5HifiGanConfig,
)

VOCAB_SIZE = 1000
# The frames the video model makes in one run; a longer clip blends between them.
VIDEO_FRAMES = 8
_MAX_TOKENS = 77
_SEED = 0


def build_all(root: Path) -> dict[str, Path]:
    """Every tiny pipeline under `root`, by the mode it serves (image modes share one)."""
    image = build_text_to_image(root / "tiny-sd")
    return {
        "text_to_image": image,
        "image_to_image": image,
        "image_to_video": build_image_to_video(root / "tiny-svd"),
        "text_to_audio": build_text_to_audio(root / "tiny-audioldm"),
    }


def build_text_to_image(folder: Path) -> Path:
    """A Stable Diffusion pipeline: UNet, VAE, CLIP text encoder and tokenizer, DDIM."""
    torch.manual_seed(_SEED)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16),
        layers_per_block=1,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=4,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            vocab_size=VOCAB_SIZE,
            max_position_embeddings=_MAX_TOKENS,
        )
    )
    pipeline = StableDiffusionPipeline(
        unet=unet,
        vae=_image_vae(channels=3),
        text_encoder=text_encoder,
        tokenizer=_clip_tokenizer(folder.with_name(folder.name + "-vocabulary")),
        scheduler=_ddim(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(folder)
    return folder


def build_image_to_video(folder: Path) -> Path:
    """A Stable Video Diffusion pipeline: spatio-temporal UNet, temporal VAE, CLIP vision."""
    torch.manual_seed(_SEED)
    # Its blocks normalise in groups of 32 channels: the smallest widths it takes.
    unet = UNetSpatioTemporalConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=32,
        in_channels=8,
        out_channels=4,
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
        cross_attention_dim=32,
        num_attention_heads=(2, 4),
        projection_class_embeddings_input_dim=96,
        addition_time_embed_dim=32,
        num_frames=VIDEO_FRAMES,
    )
    # Three levels: latents an eighth of the picture's side, as in the real model.
    vae = AutoencoderKLTemporalDecoder(
        block_out_channels=(32, 32, 32),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        latent_channels=4,
        layers_per_block=1,
    )
    # The pipeline shows the encoder the image at 224 x 224, CLIP's size.
    image_encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=32,
            projection_dim=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=37,
            image_size=224,
            patch_size=32,
        )
    )
    scheduler = EulerDiscreteScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        interpolation_type="linear",
        prediction_type="v_prediction",
        sigma_max=700.0,
        sigma_min=0.002,
        steps_offset=1,
        timestep_spacing="leading",
        timestep_type="continuous",
        use_karras_sigmas=True,
    )
    pipeline = StableVideoDiffusionPipeline(
        vae=vae,
        image_encoder=image_encoder,
        unet=unet,
        scheduler=scheduler,
        feature_extractor=CLIPImageProcessor(crop_size=224, size=224),
    )
    pipeline.save_pretrained(folder)
    return folder


def build_text_to_audio(folder: Path) -> Path:
    """An AudioLDM pipeline: a mel-spectrogram UNet and VAE, CLAP text encoder, HiFi-GAN."""
    torch.manual_seed(_SEED)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16),
        layers_per_block=1,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=(8, 16),
        class_embed_type="simple_projection",
        projection_class_embeddings_input_dim=8,
        class_embeddings_concat=True,
        attention_head_dim=4,
        norm_num_groups=4,
    )
    text_encoder = ClapTextModelWithProjection(
        ClapTextConfig(
            bos_token_id=0,
            eos_token_id=2,
            pad_token_id=1,
            hidden_size=8,
            intermediate_size=37,
            num_attention_heads=1,
            num_hidden_layers=1,
            vocab_size=VOCAB_SIZE,
            projection_dim=8,
            max_position_embeddings=_MAX_TOKENS + 3,
        )
    )
    # 8 mel bins; each spectrogram frame becomes 64 samples at 16 kHz.
    vocoder = SpeechT5HifiGan(
        SpeechT5HifiGanConfig(
            model_in_dim=8,
            sampling_rate=16_000,
            upsample_initial_channel=16,
            upsample_rates=[8, 8],
            upsample_kernel_sizes=[16, 16],
            resblock_kernel_sizes=[3, 7],
            resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5]],
            normalize_before=False,
        )
    )
    with torch.no_grad():  # random weights whisper (1e-5): made loud enough to hear in 16 bits
        vocoder.conv_post.weight *= 1e4
    pipeline = AudioLDMPipeline(
        vae=_image_vae(channels=1),
        text_encoder=text_encoder,
        tokenizer=_roberta_tokenizer(folder.with_name(folder.name + "-vocabulary")),
        unet=unet,
        scheduler=_ddim(),
        vocoder=vocoder,
    )
    pipeline.save_pretrained(folder)
    return folder


def _image_vae(*, channels: int) -> AutoencoderKL:
    return AutoencoderKL(
        block_out_channels=(8, 16),
        in_channels=channels,
        out_channels=channels,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=4,
    )


def _ddim() -> DDIMScheduler:
    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


# ---------------------------------------------------------------- tokenizers from written files


def _byte_characters() -> list[str]:
    """The 256 characters byte-level BPE spells bytes with (GPT-2's table, as CLIP's)."""
    visible = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    visible += range(ord("®"), ord("ÿ") + 1)
    shifted, extra = [], 0
    for byte in range(256):
        if byte in visible:
            shifted.append(chr(byte))
        else:
            shifted.append(chr(256 + extra))
            extra += 1
    return shifted


def _write_vocabulary(folder: Path, tokens: list[str]) -> tuple[str, str]:
    """vocab.json and a merges.txt without merges: every word is spelt by its characters."""
    folder.mkdir(parents=True)
    vocab, merges = folder / "vocab.json", folder / "merges.txt"
    vocab.write_text(json.dumps({token: index for index, token in enumerate(tokens)}))
    merges.write_text("#version: 0.2\n")
    return str(vocab), str(merges)


def _clip_tokenizer(folder: Path) -> CLIPTokenizer:
    # CLIP marks a word's last character with </w>.
    characters = _byte_characters()
    tokens = ["<|startoftext|>", "<|endoftext|>", *characters, *(c + "</w>" for c in characters)]
    vocab, merges = _write_vocabulary(folder, tokens)
    return CLIPTokenizer(vocab, merges, model_max_length=_MAX_TOKENS)


def _roberta_tokenizer(folder: Path) -> RobertaTokenizer:
    tokens = ["<s>", "<pad>", "</s>", "<unk>", *_byte_characters(), "<mask>"]
    vocab, merges = _write_vocabulary(folder, tokens)
    return RobertaTokenizer(vocab, merges, model_max_length=_MAX_TOKENS)
