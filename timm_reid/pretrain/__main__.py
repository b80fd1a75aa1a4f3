"""``python -m timm_reid.pretrain``: bad options, files or data end with one paragraph on stderr
and exit status 2, not a traceback."""
import sys

from timm_reid._run import USER_ERRORS
from timm_reid.pretrain.config import check_resume_options, explicit_options, parse_args
from timm_reid.pretrain.run import main


def cli(argv=None) -> int:
    try:
        args = parse_args(argv)
    except USER_ERRORS as err:  # a flag of another method than --method
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        check_resume_options(args.resume, explicit_options(argv if argv is not None else sys.argv[1:]))
        main(args)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted; continue with --resume {args.resume or args.output}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(cli())
