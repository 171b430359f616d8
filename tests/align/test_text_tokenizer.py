import json
import subprocess
import sys

from medm2g_core.models.text_tokenizer import build_vocabulary, train_wordpiece

REPORTS = [
    "FINDINGS: Moderate cardiomegaly. Small left pleural effusion. IMPRESSION: Cardiomegaly with effusion.",
    "FINDINGS: The heart is normal in size. No pleural effusion or pneumothorax. IMPRESSION: No acute disease.",
    "FINDINGS: A 12 mm nodule in the right upper lobe. IMPRESSION: Pulmonary nodule.",
]

CODE = """
import json, sys
from medm2g_core.models.text_tokenizer import train_wordpiece
texts = json.loads(sys.argv[1])
print(json.dumps(train_wordpiece(texts, vocab_size=60, max_tokens=32).get_vocab(), sort_keys=True))
"""


def test_vocabulary_is_identical_across_processes_and_orders():
    # tokenizers' WordPieceTrainer broke frequency ties in hash order: every process got another vocabulary
    runs = {
        subprocess.run([sys.executable, "-c", CODE, json.dumps(texts)], capture_output=True, text=True, check=True).stdout
        for texts in (REPORTS, REPORTS, list(reversed(REPORTS)))
    }
    assert len(runs) == 1


def test_round_trip_without_unknown_tokens_and_frequent_words_whole():
    tokenizer = train_wordpiece(REPORTS, vocab_size=80, max_tokens=64)
    vocabulary = build_vocabulary(REPORTS, vocab_size=80)
    assert tokenizer.get_vocab() == vocabulary
    assert "effusion" in vocabulary and "##z" in vocabulary  # frequent word whole; every character present
    ids = tokenizer("No pleural effusion. A 12 mm nodule.")["input_ids"]
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids, skip_special_tokens=True).replace(" .", ".") == "no pleural effusion. a 12 mm nodule."
    rare = tokenizer("pneumothorax")["input_ids"]  # out-of-vocabulary words fall back to pieces, not [UNK]
    assert tokenizer.unk_token_id not in rare
