"""Real, hand-annotated images as COCO-format datasets (docs/real_images.md).

    python tools/dataset_converters/real_images.py trees --out data/real/trees
    python tools/dataset_converters/real_images.py nuclei --out data/real/nuclei

trees: tree crowns (boxes) from the deepforest 2.1.0 wheel; train.json (overlapping tiles of one Yellowstone
crop), val.json (the other Yellowstone crop), val_other_sites.json (OSBS_029, SOAP_061).
nuclei: cell nuclei (RLE masks) from the stardist 0.9.2 wheel; train.json / val.json (left / right of a column).
The wheel is downloaded once with pip (no install) into --cache.
"""
import argparse
import sys

from mmsparse.datasets.real import FetchError, convert_nuclei, convert_trees


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('dataset', choices=['trees', 'nuclei'])
    parser.add_argument('--out', help='output folder (default: data/real/<dataset>)')
    parser.add_argument('--cache', default='data/real/wheels', help='where the downloaded wheels are kept')
    parser.add_argument('--tile', type=int, default=400, help='trees: training tile side in pixels')
    parser.add_argument('--min-overlap', type=int, default=110,
                        help='trees: least overlap of neighbouring tiles (the largest box side fits whole)')
    parser.add_argument('--min-visible', type=float, default=0.5,
                        help='trees: a box cut by a tile border is kept when this fraction of its area remains')
    parser.add_argument('--column', type=int, help='nuclei: the split column (default: the one the fewest '
                        'nuclei cross, within 10%% of the width around the middle)')
    args = parser.parse_args()
    out = args.out or f'data/real/{args.dataset}'
    try:
        if args.dataset == 'trees':
            c = convert_trees(out, args.cache, args.tile, args.min_overlap, args.min_visible)
            print(f'train: {c["tiles"]} tiles of {args.tile} px, {c["boxes"]} trees, {c["whole_in_a_tile"]} of them '
                  f'whole inside at least one tile; {c["instances"]} boxes in the tiles ({c["clipped_kept"]} '
                  f'clipped at a border and kept, {c["clipped_dropped"]} parts under {args.min_visible:.0%} '
                  'dropped)')
            print(f'val: {c["val_boxes"]} trees; val_other_sites: {c["val_other_sites_boxes"]} trees')
        else:
            c = convert_nuclei(out, args.cache, args.column)
            print(f'{c["nuclei"]} nuclei, split at column {c["column"]}: train {c["train"]}, val {c["val"]}, '
                  f'{c["crossing_dropped"]} crossing the cut left out; every kept mask intact')
    except (FetchError, ValueError) as exc:
        sys.exit(f'error: {exc}')
    print('wrote ' + ', '.join(c['files'].values()))


if __name__ == '__main__':
    main()
