"""The main job on the embedded default: generate the demo configs' synthetic data if missing (their
``synthetic_data`` entries), then for the demo Mask R-CNN and UPerNet (reduced BiFormer backbones, trained
from scratch, seeded). With ``--data real``: convert the real images of docs/real_images.md (downloaded from
PyPI on first use) and do the same for RetinaNet on the tree crowns and Mask R-CNN on the cell nuclei:

1. evaluate the initialised, untrained model through tools/test.py;
2. train it through tools/train.py (mmengine's progress is shown);
3. evaluate the final checkpoint through tools/test.py;
4. draw its predictions on a few validation images next to the ground truth (mmdet's / mmseg's visualizer).

Metrics are read from the JSON file that tools/test.py (mmengine's LoggerHook) writes into its work dir, the
loss curves from mmengine's ``vis_data/scalars.json``. Ends with a summary table (untrained vs trained, times)
and the paths of the pictures, all under ``--work-dir``.

    python tools/demo.py [--data synthetic|real] [--tasks TASK ...] [--iters N] [--work-dir DIR] [--num-images 4]

``--iters`` shortens (or lengthens) training: every LR-scheduler entry that ends at the config's ``max_iters``
is stretched to the new length.
"""
import argparse

from mmsparse.benchmark.demo import JOBS, run_demo


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--data', choices=sorted(JOBS), default='synthetic',
                        help='the embedded synthetic data (default) or the real images')
    parser.add_argument('--tasks', nargs='+', metavar='TASK',
                        help='run only these jobs (synthetic: detection, segmentation; real: trees, nuclei)')
    parser.add_argument('--iters', type=int, help='training iterations (default: each config\'s max_iters); '
                        'scheduler entries that end at max_iters are stretched to match')
    parser.add_argument('--work-dir', help='default: work_dirs/demo, or work_dirs/demo_real with --data real')
    parser.add_argument('--num-images', type=int, default=4, help='validation images drawn per model (at most)')
    args = parser.parse_args()
    if args.iters is not None and args.iters < 1:
        parser.error('--iters must be a positive integer')
    if args.num_images < 1:
        parser.error('--num-images must be a positive integer')

    work_dir = args.work_dir or ('work_dirs/demo' if args.data == 'synthetic' else 'work_dirs/demo_real')
    run_demo(args.iters, work_dir, args.num_images, args.data, args.tasks)


if __name__ == '__main__':
    main()
