"""`bridgetower-gaudi`: inference from the command line, a thin front end over `bridgetower_gaudi.pipeline`.

    bridgetower-gaudi score     --model DIR IMAGE TEXT [TEXT ...]
    bridgetower-gaudi fill-mask --model DIR IMAGE "a [MASK] circle on the left" --top 5
    bridgetower-gaudi search    --model DIR IMAGE_DIR "a red circle on the left" --top 5
    bridgetower-gaudi search    --model DIR IMAGE --rank-captions CAPTIONS.txt --top 5   # captions for an image
    bridgetower-gaudi vqa       --model DIR IMAGE "what colour is the circle?"

Common flags: --output {table,json}, --device {auto,hpu,cuda,cpu}, --bf16, --batch-size, --max-seq-length.

Flags are spelt with dashes; the run scripts' spellings (underscores: --max_seq_length, --model_name_or_path) are
accepted too, and so are the old names --max-length and --images-for.

On Gaudi, start it with PT_HPU_LAZY_MODE=1 for HPU graphs: lazy mode is chosen when torch is first imported, which
importing this package already does, so the command cannot choose it itself.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--model", "--model_name_or_path", "--model-name-or-path", dest="model",
        help="checkpoint folder (e.g. outputs/pretrain-tiny-synthetic); required",
    )  # fmt: skip
    common.add_argument("--output", choices=("table", "json"), default="table", help="readable table or JSON")
    common.add_argument("--device", choices=("auto", "hpu", "cuda", "cpu"), default="auto")
    common.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    common.add_argument(
        "--batch-size", "--batch_size", type=int, default=32, help="pairs / images per forward (fixed on HPU)"
    )
    common.add_argument(
        "--max-seq-length", "--max_seq_length", "--max-length", dest="max_seq_length", type=int, default=None,
        help="caption length in tokens (default: the model's positions)",
    )  # fmt: skip

    parser = argparse.ArgumentParser(prog="bridgetower-gaudi", description="BridgeTower inference.")
    commands = parser.add_subparsers(dest="command", required=True)

    score = commands.add_parser("score", parents=[common], help="ITM match probability of each text with an image")
    score.add_argument("image")
    score.add_argument("texts", nargs="+")

    fill = commands.add_parser("fill-mask", parents=[common], help="the top words for [MASK] / <mask>, given an image")
    fill.add_argument("image")
    fill.add_argument("text")
    fill.add_argument("--top", type=int, default=5)

    search = commands.add_parser(
        "search",
        parents=[common],
        help="images of a folder for a sentence, or (--rank-captions) captions of a file for an image",
    )
    search.add_argument("target", help="a folder of images (searched recursively), or an image with --rank-captions")
    search.add_argument("query", nargs="?", help="the sentence to search the folder for")
    search.add_argument(
        "--rank-captions", "--rank_captions", "--images-for", dest="rank_captions", metavar="CAPTIONS_FILE",
        help="rank the captions of CAPTIONS_FILE (one per line) for the image given as target",
    )  # fmt: skip
    search.add_argument("--top", type=int, default=5)
    search.add_argument("--rerank", type=int, default=16, help="ITC candidates re-ranked by ITM (with ITC heads)")
    search.add_argument(
        "--cache-dir",
        "--cache_dir",
        help="where image states are cached (default: IMAGE_DIR/.bridgetower_cache); nothing else is written",
    )

    vqa = commands.add_parser("vqa", parents=[common], help="answer a question about an image (needs a VQA head)")
    vqa.add_argument("image")
    vqa.add_argument("question")
    vqa.add_argument("--top", type=int, default=5, help="how many answers (default 5)")
    return parser


def _table(headers: list[str], rows: list[list]) -> str:
    cells = [[f"{v:.4f}" if isinstance(v, float) else str(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def _score_columns(results: list[dict], key: str) -> tuple[list[str], list[list]]:
    scores = [name for name in ("itm", "itc") if results and name in results[0]]
    return [key, *scores], [[r[key], *(r[name] for name in scores)] for r in results]


def run(args) -> tuple[object, str]:
    """(what --output json prints, the readable table) for the parsed command."""
    from .pipeline import BridgeTowerPipeline, PipelineError  # torch and transformers: after --help is answered

    if args.command == "search" and not args.rank_captions and not args.query:
        raise PipelineError(
            "search needs a query: search --model DIR IMAGE_DIR 'a sentence' (or --rank-captions FILE)."
        )
    pipe = BridgeTowerPipeline.from_pretrained(
        args.model,
        device=args.device,
        bf16=args.bf16,
        batch_size=args.batch_size,
        max_length=args.max_seq_length,
        rerank=getattr(args, "rerank", 16),
    )
    if args.command == "score":
        results = pipe.score(args.image, args.texts)
        return {"image": args.image, "scores": results}, _table(*_score_columns(results, "text"))
    if args.command == "vqa":
        answers = pipe.vqa(args.image, args.question, top=args.top)
        table = _table(["answer", "score"], [[a["answer"], a["score"]] for a in answers])
        return {"image": args.image, "question": args.question, "answers": answers}, table
    if args.command == "fill-mask":
        results = pipe.fill_mask(args.image, args.text, top=args.top)
        tables = [
            _table(["token", "score", "sequence"], [[r["token"], r["score"], r["sequence"]] for r in masked])
            for masked in results
        ]
        return {"image": args.image, "text": args.text, "predictions": results}, "\n\n".join(tables)
    if args.rank_captions:
        if not os.path.isfile(args.rank_captions):
            raise PipelineError(f"--rank-captions {args.rank_captions!r}: no such file (one caption per line).")
        with open(args.rank_captions) as f:
            captions = [line.strip() for line in f if line.strip()]
        result = pipe.search_captions(args.target, captions, top=args.top)
        table = _table(*_score_columns(result.matches, "caption"))
        return {"image": args.target, **result.to_dict()}, f"{table}\n(ranked by {result.ranked_by})"
    result = pipe.search(args.target, args.query, top=args.top, cache_dir=args.cache_dir)
    lines = [_table(*_score_columns(result.matches, "path")), f"(ranked by {result.ranked_by}; "]
    lines[-1] += f"{result.embedded} images embedded, {result.cached} from the cache)"
    if result.skipped:
        lines.append(f"skipped {len(result.skipped)} unreadable file(s):")
        lines += [f"  {s['path']} ({s['reason']})" for s in result.skipped]
    return {"query": args.query, "folder": args.target, **result.to_dict()}, "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.model is None:  # not argparse's required=True: any of the model flag's spellings may give it
        parser.error("the following arguments are required: --model")
    from .pipeline import PipelineError

    try:
        payload, table = run(args)
    except PipelineError as error:
        print(f"bridgetower-gaudi {args.command}: error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(payload, indent=2) if args.output == "json" else table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
