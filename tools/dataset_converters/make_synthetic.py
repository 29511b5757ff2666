"""Generate the embedded synthetic datasets (deterministic from --seed).

    python tools/dataset_converters/make_synthetic.py                 # both, under data/
    python tools/dataset_converters/make_synthetic.py --task coco --out data/synthetic_coco
    python tools/dataset_converters/make_synthetic.py --config configs/demo/maskrcnn_demo_synthetic.py

``--config`` takes the task, output folder and sizes from the config's ``synthetic_data`` entry, e.g.
``synthetic_data = dict(task='coco', out='data/demo_coco', num_train=400, num_val=32)``.

COCO layout: <out>/annotations/instances_{train,val}2017.json, <out>/{train,val}2017/*.jpg
ADE20K layout: <out>/images/{training,validation}/*.jpg, <out>/annotations/{training,validation}/*.png
"""
import argparse
import os.path as osp

from mmsparse.datasets import make_synthetic_ade20k, make_synthetic_coco

DEFAULT_OUT = {'coco': 'data/synthetic_coco', 'ade20k': 'data/synthetic_ade20k/ADEChallengeData2016'}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--task', choices=['coco', 'ade20k', 'all'], default='all')
    parser.add_argument('--out', help='output folder (only with a single --task); default: ' + str(DEFAULT_OUT))
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--num-train', type=int, default=64)
    parser.add_argument('--num-val', type=int, default=16)
    parser.add_argument('--skip-existing', action='store_true', help='do nothing for a dataset already present')
    parser.add_argument('--config', help='a config with a synthetic_data entry (task, out, num_train, num_val and '
                        'optionally seed), which replaces those options')
    args = parser.parse_args()
    if args.config:
        from mmengine.config import Config
        spec = Config.fromfile(args.config).get('synthetic_data')
        if not isinstance(spec, dict) or spec.get('task') not in DEFAULT_OUT or 'out' not in spec:
            parser.error(f'{args.config} has no synthetic_data=dict(task=\'coco\'|\'ade20k\', out=..., ...) entry')
        unknown = set(spec) - {'task', 'out', 'seed', 'num_train', 'num_val'}
        if unknown:
            parser.error(f'synthetic_data in {args.config}: unknown keys {sorted(unknown)}')
        vars(args).update(spec)
    tasks = ['coco', 'ade20k'] if args.task == 'all' else [args.task]
    if args.out and len(tasks) > 1:
        parser.error('--out needs a single --task (coco or ade20k)')
    for task in tasks:
        out = args.out or DEFAULT_OUT[task]
        marker = osp.join(out, 'annotations', 'instances_val2017.json' if task == 'coco' else 'validation')
        if args.skip_existing and osp.exists(marker):
            print(f'{task}: {out} exists, skipped')
            continue
        make = make_synthetic_coco if task == 'coco' else make_synthetic_ade20k
        make(out, seed=args.seed, num_train=args.num_train, num_val=args.num_val)
        print(f'{task}: wrote {args.num_train} train / {args.num_val} val images to {out}')


if __name__ == '__main__':
    main()
