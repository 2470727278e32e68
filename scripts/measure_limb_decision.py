"""decide_limb accuracy on a held-out phantom cohort renamed so that no name says the limb."""
import sys, time, json
from pathlib import Path
from annotation_tools.phantoms import generate_cohort
from annotation_tools.imageio import read_image, write_png
from annotation_tools.intake import import_sources
from annotation_tools.locator import JointLocator
seed, n = int(sys.argv[1]), int(sys.argv[2])
root = Path(f'/tmp/h_io2/m{seed}_{n}')
if not root.exists():
    generate_cohort(root/'cohort', n, seed=seed, height=512, us_pairs=0, workers=1, progress=False)
    (root/'anon').mkdir()
    truth = {}
    for i, f in enumerate(sorted((root/'cohort'/'radiographs').iterdir())):
        out = root/'anon'/f'scan{i:04d}.png'
        write_png(out, read_image(f).pixels)
        truth[str(out.resolve())] = f.stem[-2:]
    (root/'truth.json').write_text(json.dumps(truth))
truth = json.loads((root/'truth.json').read_text())
loc = JointLocator.from_bundle('monai_bundles/ra_joint_locator', device='cpu')
t = time.perf_counter()
rep = import_sources(root/f'project{time.time_ns()}', [root/'anon'], decide=loc, limb_threshold=0.0)
secs = time.perf_counter() - t
got = {r['path']: (r['limb'], float(r['limb_source'].split('confidence ')[1].split(':')[0])) for r in rep.imported}
right = sum(got[p][0] == truth[p] for p in truth)
kind = sum(got[p][0][1] == truth[p][1] for p in truth)
confs = sorted(c for _, c in got.values())
wrong = [(Path(p).name, truth[p], got[p]) for p in truth if got[p][0] != truth[p]]
above = [p for p in truth if got[p][1] >= 0.3]
print(f"seed {seed}: {right}/{len(truth)} limbs right, kind {kind}/{len(truth)}; "
      f"confidence min {confs[0]:.2f} median {confs[len(confs)//2]:.2f}; "
      f">=0.3: {len(above)} of which right {sum(got[p][0]==truth[p] for p in above)}; "
      f"{secs/len(truth):.2f} s/file; wrong {wrong}; skipped {rep.skipped}")
