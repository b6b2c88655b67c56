import torch

from refusal.model.chat import ChatFormatter


def test_user_text_and_post_instruction_located(tiny):
    fmt = ChatFormatter(tiny.tokenizer)
    enc = fmt.encode(["hello", "a longer request here"])
    tok = tiny.tokenizer
    for b, text in enumerate(["hello", "a longer request here"]):
        cs, ce = int(enc.content_start[b]), int(enc.content_end[b])
        assert tok.decode(enc.input_ids[b, cs:ce]) == text
        assert tok.decode(enc.input_ids[b, ce:]) == fmt.suffix
    assert fmt.n_post_instruction == enc.seq_len - int(enc.content_end[1])


def test_left_padding_and_positions(tiny):
    fmt = ChatFormatter(tiny.tokenizer)
    enc = fmt.encode(["x", "longer prompt"])
    assert enc.attention_mask[0, 0] == 0 and enc.attention_mask[0, -1] == 1
    first_real = int((enc.attention_mask[0] == 1).nonzero()[0])
    assert enc.position_ids[0, first_real] == 0
    assert enc.position_ids[0, -1] == enc.n_tokens[0] - 1
    last = enc.positions("last")
    assert all(int(p[0]) == enc.seq_len - 1 for p in last)
    post = enc.positions("post_instruction")[0]
    assert len(post) == fmt.n_post_instruction
    mean_idx = enc.positions("prompt_mean")[0]
    assert tiny.tokenizer.decode(enc.input_ids[0, mean_idx]) == "x"


def test_padded_prompt_matches_unpadded_forward(tiny):
    fmt = ChatFormatter(tiny.tokenizer)
    alone = fmt.encode(["hi"])
    both = fmt.encode(["hi", "a considerably longer prompt"])
    with torch.no_grad():
        a = tiny.model(**alone.model_inputs()).logits[0, -1]
        b = tiny.model(**both.model_inputs()).logits[0, -1]
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_system_prompt_and_truncation(tiny):
    fmt = ChatFormatter(tiny.tokenizer, system_prompt="Be brief.", max_length=40)
    assert "Be brief." in fmt.prefix
    enc = fmt.encode(["word " * 50])
    assert enc.seq_len == 40
    assert tiny.tokenizer.decode(enc.input_ids[0, int(enc.content_end[0]):]) == fmt.suffix
