"""Tiny Vicuna stand-in: a 2-layer LLaMA causal LM plus a byte-level BPE tokenizer trained here.

The directory it writes loads with ``AutoModelForCausalLM`` / ``AutoTokenizer`` exactly like
``lmsys/vicuna-7b-v1.5`` does, and the tokenizer keeps LLaMA's conventions:

- ids ``<unk>`` = 0, ``<s>`` = 1, ``</s>`` = 2; ``<s>`` is prepended to every sequence, no ``</s>``;
- the pad token is ``<unk>`` (what Vicuna / LLaVA-style trainers set);
- ``<video>`` is one additional special token (never split);
- ``return_offsets_mapping=True`` gives exact character spans: ``text[start:end]`` is the token's
  text without the leading space that byte-level BPE glues onto words.

Everything is seeded, so two builds write byte-identical files.
"""

from __future__ import annotations

from pathlib import Path

VOCAB_SIZE = 2000
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>"]  # ids 0, 1, 2 as in LLaMA
VIDEO_TOKEN = "<video>"

# Video-caption-like English, InternVid / ActivityNet flavour. The corpus is the cross product
# of these lists (plus the template and time words below), so it is large enough for ~2000 merges.
_SUBJECTS = [
    "a woman", "a man", "a young girl", "an old man", "two children", "a small dog", "a black cat",
    "a chef", "a person", "the player", "a group of people", "a boy", "the teacher", "a dancer",
    "a worker", "the driver", "a horse", "a bird", "the camera", "a mechanic",
]
_ACTIONS = [
    "is counting money with a pen on a white table", "is cutting vegetables in the kitchen",
    "rides a bicycle down the street", "plays the guitar on a stage", "is running across the field",
    "throws a red ball to a friend", "is painting a wall with a brush", "walks into the room",
    "is talking to the camera", "pours water into a glass", "is cleaning the car with a sponge",
    "jumps over a wooden fence", "is reading a book near the window", "opens the front door",
    "is swimming in a blue pool", "lifts a heavy box onto the shelf", "is washing dishes in the sink",
    "kicks the ball into the goal", "is typing on a laptop at the desk", "holds a cup of coffee",
    "is climbing a tall tree", "shows a plate of food", "is fixing the engine of a truck",
    "dances in front of the mirror", "is brushing the hair of a horse", "sits on a green sofa",
]
_PLACES = [
    "", " in the park", " at night", " on the beach", " in a busy city", " while it is raining",
    " next to a river", " in the snow", " inside a small shop", " during the game",
]
_QUESTIONS = [
    "What is happening in the video?", "Describe the video in detail.",
    "When does the woman open the door?", "Can you tell me what the man is doing?",
    "Where is the dog in the first frame?", "How many people are in the video?",
    "Please describe the events with their start and end time.",
    "Which object does the person pick up?", "Why is the child laughing?",
]
# More everyday words (objects, verbs, adjectives) so the BPE has enough distinct words to merge.
_WORDS = """
apple bag ball banana basket bat bed bench bicycle blanket boat bottle bowl bread bridge bucket
building bus butterfly cake camera candle car carpet chair cheese chicken clock cloud coat computer
cookie couch cow cup curtain desk door dress drum egg elephant engine fence field fish flag flower
fork fountain fridge frog garden gate giraffe glass glove goat guitar hammer hat helmet hill house
jacket kettle key kite knife ladder lamp leaf lemon letter lion map microphone mirror monkey moon
motorcycle mountain mouse mug necklace newspaper notebook orange oven paint paper pencil phone piano
picture pillow pizza plant plate pot potato rabbit racket rock rope sandwich scarf scissors sheep
shirt shoe sign sink skateboard sky snake sock spoon stairs star stone street sun surfboard table
teapot telephone tent tiger tomato towel tower toy tractor train tree truck umbrella vase violin
wall watch wheel window wine zebra
arrange bake bend blow boil bounce build carry catch chase chop climb close cook crawl cross dig
dive drag draw drink drive drop eat enter fall feed fill fold follow grab hang hit hold hug juggle
kneel knock laugh lean lick lift listen look mix move nod paddle pat peel pick point pour press
pull push put raise reach ride roll rub run sail scoop scratch serve shake shout sing sit skate
ski slice slide smile spin splash spray squeeze stack stand stir stretch surf sweep swing talk
taste tie touch toss turn twist wave wipe write yell
big small tall short long round square bright dark wet dry soft hard hot cold empty full heavy
light new old clean dirty happy sad quiet loud fast slow wooden metal plastic yellow purple pink
brown gray golden silver striped colorful
first second third then after before while finally slowly quickly carefully together again behind
above below under between around through across toward beside inside outside
""".split()
_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


def corpus() -> list[str]:
    """Training text for the tokenizer: captions, Vicuna turns and ``From 05 to 23`` time spans.

    Special tokens (``<video>``, ``</s>``) stay out of it: they are added whole, never learned.
    """
    lines = [f"{s} {a}{p}." for s in _SUBJECTS for a in _ACTIONS for p in _PLACES]
    lines += [line[0].upper() + line[1:] for line in lines[::7]]
    times = [f"{i:02d}" for i in range(100)]
    for i, q in enumerate(_QUESTIONS):
        start, end = times[(7 * i) % 90], times[(7 * i) % 90 + 9]
        lines.append(f"{_SYSTEM} USER: {q}\nASSISTANT: From {start} to {end}, {lines[i]}")
    lines += [f"From {a} to {b}, {lines[int(a)]}" for a, b in zip(times, times[1:] + times[:1])]
    lines.append(" ".join(times))
    lines += [f"{s} looks at the {w} and then the {w}s." for s in _SUBJECTS[:4] for w in _WORDS]
    return lines


def train_tokenizer():
    """Byte-level BPE (``tokenizers.Tokenizer``) with LLaMA's special tokens and BOS template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=1,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    bos_id = tok.token_to_id("<s>")
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=True),  # offsets exclude the space glued to a word
        processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s>:1 $B:1", special_tokens=[("<s>", bos_id)]
        ),
    ])
    return tok


def build(out_dir: Path) -> None:
    """Write ``config.json``, ``model.safetensors`` and the tokenizer files into ``out_dir``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=train_tokenizer(),
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<unk>",
        extra_special_tokens=[VIDEO_TOKEN],
        model_max_length=4096,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    model.generation_config.do_sample = False
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
