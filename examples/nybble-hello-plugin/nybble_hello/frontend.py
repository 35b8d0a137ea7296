"""The "hello" frontend: greets with the model's name and one greedy completion."""


def launch(llm, cfg):
    """Run by ``nybble frontend=hello``; ``frontend.extra.prompt`` sets the prompt."""
    prompt = cfg.frontend.extra.get("prompt", "Hello")
    params = llm.sampling_params(temperature=0.0, max_tokens=8)
    out = llm.generate([prompt], params, use_tqdm=False)[0]
    tokens = len(out.outputs[0].token_ids)
    print(
        f"hello from {cfg.model.name} ({cfg.quant.name} weights): {prompt!r} -> "
        f"{out.outputs[0].text!r} ({tokens} tokens)"
    )
