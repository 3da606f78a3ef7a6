"""Random-weight checkpoints built from real configs, for tests and benchmarks (nothing is downloaded).

    build_checkpoint("../shared/checkpoints/llava-1.5-7b-hf", "/tmp/tiny-llava", text_layers=2, text_width=64)
    x2dfd explain face.jpg --model /tmp/tiny-llava

The config, tokenizer, chat template and processor of the source are kept, so token ids and prompts
are the real ones (llava-1.5: 576 image tokens); only depth and width shrink. With
``text_width=None`` the real width is kept (benchmarks: full width, reduced depth). The result is
written with ``save_pretrained`` and loads through exactly the path a user's checkpoint takes.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch


def _set(cfg, **values):
    for key, value in values.items():
        if value is not None and hasattr(cfg, key):
            setattr(cfg, key, value)


def shrink_config(config, text_layers=2, text_width=64, text_heads=4, vision_layers=1, vision_width=64, vision_heads=2):
    """A copy of a vision-language config with less depth (and width, unless ``*_width`` is None).

    Widths stay multiples of 64 so bitsandbytes 4-bit blocks (64 values) fit every linear layer.
    """
    config = copy.deepcopy(config)
    text, vision = config.text_config, config.vision_config
    model_type = config.model_type
    if model_type.startswith("qwen2") and "vl" in model_type:
        # mrope splits head_dim (128) into sections: keep head_dim, shrink the number of heads.
        head_dim = text.hidden_size // text.num_attention_heads
        if text_width is not None:
            text_heads = max(1, text_width // head_dim)
            text_width = text_heads * head_dim
            _set(text, hidden_size=text_width, intermediate_size=2 * text_width, num_attention_heads=text_heads,
                 num_key_value_heads=1)
        _set(text, num_hidden_layers=text_layers, max_window_layers=text_layers)
        if vision_width is not None:
            _set(vision, embed_dim=vision_width, num_heads=vision_heads)
        _set(vision, depth=vision_layers, hidden_size=text.hidden_size)
        if hasattr(config, "hidden_size"):
            config.hidden_size = text.hidden_size
    else:
        if text_width is not None:
            _set(text, hidden_size=text_width, intermediate_size=2 * text_width, num_attention_heads=text_heads,
                 num_key_value_heads=text_heads, head_dim=text_width // text_heads)
        _set(text, num_hidden_layers=text_layers)
        if vision_width is not None:
            _set(vision, hidden_size=vision_width, intermediate_size=2 * vision_width, num_attention_heads=vision_heads,
                 projection_dim=vision_width)
        _set(vision, num_hidden_layers=vision_layers)
        if getattr(config, "vision_feature_layer", None) is not None and vision_layers is not None:
            config.vision_feature_layer = -1 if vision_layers < 2 else config.vision_feature_layer
    if getattr(text, "layer_types", None) is not None:
        text.layer_types = list(text.layer_types)[: text.num_hidden_layers]
    return config


def build_checkpoint(source_dir: str | Path, out_dir: str | Path, seed: int = 0, dtype: torch.dtype = torch.float32,
                     **shrink) -> Path:
    """Build a random-weight model from ``source_dir``'s config (shrunk), save it with its processor."""
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    config = shrink_config(AutoConfig.from_pretrained(source_dir), **shrink)
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config, dtype=dtype)
    processor = AutoProcessor.from_pretrained(source_dir)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


# A LLaVA-1.5-style chat template ("USER: <image>\n... ASSISTANT: ..."), for the self-contained model below.
_LLAVA_STYLE_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' ' }}{% endfor %}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


def build_selfcontained_llava(out_dir: str | Path, seed: int = 0, image_size: int = 32, patch_size: int = 8) -> Path:
    """A tiny LLaVA-architecture checkpoint with its own small BPE tokenizer: needs no file from anywhere.

    Used where ``../shared/checkpoints`` is absent, so the load -> prompt -> verdict path stays covered.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor, PreTrainedTokenizerFast)

    corpus = [
        "USER: ASSISTANT: This image is real. This image is fake. Is this face image real or fake?",
        "External detectors report that the blending score is 0.873 N/A (scores near 1 suggest a forgery).",
        'Answer with "This image is real." or "This image is fake." and explain which visual evidence in the face '
        "supports the answer. The skin is smooth, the eyes, the mouth, the boundary is blurred, lighting, teeth.",
    ]
    specials = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus * 4, trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                        pad_token="<pad>", extra_special_tokens={"image_token": "<image>"})
    image_processor = CLIPImageProcessor(size={"shortest_edge": image_size},
                                         crop_size={"height": image_size, "width": image_size})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=patch_size,
                               vision_feature_select_strategy="default", chat_template=_LLAVA_STYLE_TEMPLATE,
                               num_additional_image_tokens=1)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                       image_size=image_size, patch_size=patch_size, projection_dim=32),
        text_config=LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                                pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                                eos_token_id=tokenizer.eos_token_id),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir
