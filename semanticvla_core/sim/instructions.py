"""Language for the tabletop tasks: instruction sets by kind (direct, rephrased, reasoning) and split.

Every phrase source (templates, colour words, indirect colour references, spatial phrases, puzzles)
exists once for the ``train`` split and once for the ``eval`` split, and the two lists share no entry.
Each template's fixed words differ between splits, so no evaluation instruction can equal a training
one whatever the slot values (``test_sim_instructions.py`` checks this exhaustively on sampled episodes).

Kinds:
* ``direct``: the object and destination by their colour ("put the red cube on the blue plate").
* ``rephrased``: synonyms, reordering, indirect references ("the block that is the colour of grass").
* ``reasoning``: the referent must be worked out: plates/areas by their label ("the plate showing the
  answer to 2+3", "the letter after B", "the first letter of 'dog'"), cubes by a spatial rule
  ("the cube closest to the robot").
"""
from __future__ import annotations

import numpy as np

KINDS = ("direct", "rephrased", "reasoning")
SPLITS = ("train", "eval")

# ---------------------------------------------------------------- colour words
COLOR_SYNONYMS = {
    "train": {"red": ["crimson"], "green": ["lime"], "blue": ["navy"], "yellow": ["golden"],
              "purple": ["violet"], "orange": ["tangerine"], "white": ["snowy"], "pink": ["rose"]},
    "eval": {"red": ["scarlet"], "green": ["emerald"], "blue": ["azure"], "yellow": ["lemon"],
             "purple": ["lilac"], "orange": ["amber"], "white": ["ivory"], "pink": ["salmon"]},
}
COLOR_THINGS = {   # "the colour of ..."
    "train": {"red": "a ripe tomato", "green": "grass", "blue": "the sky", "yellow": "a banana",
              "purple": "an aubergine", "orange": "a carrot", "white": "fresh snow", "pink": "a flamingo"},
    "eval": {"red": "a fire engine", "green": "a fresh leaf", "blue": "the deep sea", "yellow": "a lemon",
             "purple": "a grape", "orange": "a pumpkin", "white": "milk", "pink": "bubble gum"},
}
CUBE_NOUN = {"train": ["cube", "block"], "eval": ["box", "brick"]}

SPATIAL = {   # cube rules; x away from the robot, y to the robot's left
    "train": {"nearest": "the {n} closest to the robot", "farthest": "the {n} farthest from the robot",
              "leftmost": "the {n} furthest to the robot's left", "rightmost": "the {n} furthest to the robot's right"},
    "eval": {"nearest": "whichever {n} sits nearest the robot's base",
             "farthest": "whichever {n} lies at the greatest distance from the arm",
             "leftmost": "the left-most {n} from the robot's point of view",
             "rightmost": "the right-most {n} from the robot's point of view"},
}
SPELL_WORDS = {
    "train": {"A": "apple", "B": "banana", "C": "cat", "D": "dog", "E": "egg"},
    "eval": {"A": "anchor", "B": "bridge", "C": "cloud", "D": "door", "E": "eagle"},
}
_ORDINAL = {1: "first", 2: "second", 3: "third", 4: "fourth", 5: "fifth"}

# ---------------------------------------------------------------- templates per family / kind / split
# slots: {obj} the moved object, {dest} the destination (already a full noun phrase without article)
TEMPLATES = {
    "pick_place_plate": {
        "direct": {"train": ["put the {obj} on the {dest}", "place the {obj} on the {dest}",
                             "pick up the {obj} and put it on the {dest}"],
                   "eval": ["move the {obj} onto the {dest}", "set the {obj} down on the {dest}"]},
        "rephrased": {"train": ["grab the {obj} and drop it onto the {dest}", "the {obj} goes on the {dest}",
                                "onto the {dest}, place the {obj}"],
                      "eval": ["could you transfer the {obj} to the {dest}", "lift the {obj} and rest it on the {dest}",
                               "I want the {obj} sitting on the {dest}"]},
        "reasoning": {"train": ["put the {obj} on {dest}", "place the {obj} on {dest}"],
                      "eval": ["move the {obj} onto {dest}", "set the {obj} down on {dest}"]},
    },
    "pick_place_bowl": {
        "direct": {"train": ["put the {obj} in the {dest}", "place the {obj} into the {dest}",
                             "pick up the {obj} and drop it in the {dest}"],
                   "eval": ["move the {obj} into the {dest}", "deposit the {obj} inside the {dest}"]},
        "rephrased": {"train": ["the {obj} belongs in the {dest}", "grab the {obj} and put it into the {dest}",
                                "into the {dest} with the {obj}"],
                      "eval": ["could you drop the {obj} inside the {dest}", "I need the {obj} in the {dest}",
                               "take the {obj} over to the {dest} and let go of it inside"]},
        "reasoning": {"train": ["put {obj} in the {dest}", "place {obj} into the {dest}"],
                      "eval": ["move {obj} into the {dest}", "deposit {obj} inside the {dest}"]},
    },
    "stack": {
        "direct": {"train": ["stack the {obj} on the {dest}", "put the {obj} on top of the {dest}",
                             "place the {obj} on the {dest}"],
                   "eval": ["set the {obj} on top of the {dest}", "build a tower: the {obj} over the {dest}"]},
        "rephrased": {"train": ["pile the {obj} onto the {dest}", "the {obj} should be stacked on the {dest}",
                                "on top of the {dest}, stack the {obj}"],
                      "eval": ["could you balance the {obj} on the {dest}", "I want the {obj} resting atop the {dest}",
                               "lift the {obj} and lay it on the {dest}"]},
        "reasoning": {"train": ["stack {obj} on the {dest}", "put {obj} on top of the {dest}"],
                      "eval": ["set {obj} on top of the {dest}", "build a tower with {obj} over the {dest}"]},
    },
    "push_region": {
        "direct": {"train": ["push the {obj} to the {dest}", "slide the {obj} onto the {dest}",
                             "push the {obj} into the {dest}"],
                   "eval": ["shove the {obj} over to the {dest}", "nudge the {obj} until it is in the {dest}"]},
        "rephrased": {"train": ["without lifting it, move the {obj} to the {dest}", "the {obj} needs pushing to the {dest}",
                                "to the {dest}, push the {obj}"],
                      "eval": ["could you slide the {obj} across to the {dest}", "keep the {obj} on the table and get it to the {dest}",
                               "I want the {obj} pushed onto the {dest}"]},
        "reasoning": {"train": ["push the {obj} to {dest}", "slide the {obj} onto {dest}"],
                      "eval": ["shove the {obj} over to {dest}", "nudge the {obj} until it is in {dest}"]},
    },
}
DEST_NOUN = {"pick_place_plate": "plate", "pick_place_bowl": "bowl", "stack": "cube", "push_region": "square"}
DEST_NOUN_REPHRASED = {"pick_place_plate": {"train": "dish", "eval": "platter"},
                       "pick_place_bowl": {"train": "basin", "eval": "container"},
                       "stack": {"train": "block", "eval": "brick"},
                       "push_region": {"train": "area", "eval": "zone"}}


def _check(kind: str, split: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"instruction kind must be one of {KINDS}, got {kind!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def colour_phrase(color: str, noun: str, split: str, rng: np.random.Generator) -> str:
    """Rephrased reference to a coloured object: a synonym or an indirect 'the colour of ...' phrase."""
    if rng.random() < 0.5:
        return f"{rng.choice(COLOR_SYNONYMS[split][color])} {noun}"
    if split == "train":
        return f"{noun} that is the colour of {COLOR_THINGS[split][color]}"
    return f"{noun} with the same colour as {COLOR_THINGS[split][color]}"


def label_puzzle(label: str, split: str, rng: np.random.Generator) -> str:
    """A phrase whose answer is ``label`` (a digit 1-9 or a letter A-E); different puzzle forms per split."""
    if label.isdigit():
        t = int(label)
        if split == "train":
            a = int(rng.integers(0, t + 1))
            return f"the answer to {a}+{t - a}"
        if t in (4, 6, 8, 9) and rng.random() < 0.5:
            a = {4: 2, 6: 2, 8: 2, 9: 3}[t]
            return f"the result of {a} times {t // a}"
        b = int(rng.integers(1, 4))
        return f"the result of {t + b} minus {b}"
    k = ord(label) - ord("A") + 1
    if split == "train":
        if label != "A" and rng.random() < 0.5:
            return f"the letter after {chr(ord(label) - 1)}"
        return f"the first letter of the word '{SPELL_WORDS['train'][label]}'"
    r = rng.random()
    if r < 0.33:
        return f"the letter that comes right before {chr(ord(label) + 1)}"
    if r < 0.66:
        return f"the letter the word '{SPELL_WORDS['eval'][label]}' starts with"
    return f"the {_ORDINAL[k]} letter of the alphabet"


def make_instruction(family: str, kind: str, split: str, obj: dict, dest: dict,
                     rng: np.random.Generator) -> str:
    """One instruction for an episode.

    obj: {"color": str, "spatial": rule or None}; dest: {"color": str, "label": str or None}.
    """
    _check(kind, split)
    if family not in TEMPLATES:
        raise ValueError(f"unknown task family {family!r}; expected one of {sorted(TEMPLATES)}")
    tmpl = str(rng.choice(TEMPLATES[family][kind][split]))
    noun = str(rng.choice(CUBE_NOUN[split])) if kind != "direct" else "cube"
    dnoun = DEST_NOUN[family]
    if kind == "direct":
        o = f"{obj['color']} cube"
        d = f"{dest['color']} {dnoun}"
    elif kind == "rephrased":
        o = colour_phrase(obj["color"], noun, split, rng)
        dn = DEST_NOUN_REPHRASED[family][split]
        d = colour_phrase(dest["color"], dn, split, rng)
    else:  # reasoning
        if family in ("pick_place_plate", "push_region"):
            o = f"{obj['color']} cube"
            where = "plate" if family == "pick_place_plate" else "square"
            verb = "showing" if split == "train" else "labelled with"
            d = f"the {where} {verb} {label_puzzle(dest['label'], split, rng)}"
        else:
            if obj.get("spatial") is None:
                raise ValueError("reasoning instructions for this family need the target's spatial rule")
            o = SPATIAL[split][obj["spatial"]].format(n=noun)
            d = f"{dest['color']} {dnoun}"
    return tmpl.format(obj=o, dest=d)


def template_fixed_text(t: str) -> str:
    """A template with its slots removed (what must differ between splits)."""
    return t.replace("{obj}", "\x00").replace("{dest}", "\x00")
