"""A pandas DataFrame straight into training: `MultiTaskData.from_frame` infers the task kinds, embeds the text
column, standardises the regression target (metrics stay in grams) and keeps what is needed to predict.
`MultiTaskData.from_arrays(x, {task: y})` does the same for numpy arrays."""
import numpy as np
import pandas as pd

from multitask import HardSharing, MultiTaskData, Trainer

rng = np.random.default_rng(0)
n = 800
species = rng.choice(["Adelie", "Chinstrap", "Gentoo"], n)
df = pd.DataFrame({
    "island": np.where(species == "Gentoo", "Biscoe", rng.choice(["Dream", "Torgersen", "Biscoe"], n)),
    "bill_length_mm": rng.normal(40, 3, n) + (species == "Chinstrap") * 8 + (species == "Gentoo") * 6,
    "flipper_length_mm": rng.normal(190, 6, n) + (species == "Gentoo") * 25,
    "species": species,
    "body_mass_g": 3500 + (species == "Gentoo") * 1500 + rng.normal(0, 200, n),
})
df.loc[rng.random(n) < 0.05, "bill_length_mm"] = np.nan             # missing feature values: training mean

bundle = MultiTaskData.from_frame(df, targets={"species": None, "body_mass_g": "regression"},
                                  split={"val_fraction": 0.1, "test_fraction": 0.2, "seed": 0},
                                  missing_indicator=True)
print("\n".join(bundle.info["notes"]))                               # what was inferred
model = HardSharing.tabular(bundle.tasks, bundle.preprocessor.schema, hidden=(32,))
trainer = Trainer(model, bundle.tasks, epochs=20, batch_size=32, lr=3e-3, progress=False)
trainer.fit(bundle.train, val=bundle.val)
print(trainer.evaluate(bundle.test)["metrics"])                       # body_mass_g mae in grams

new = df.drop(columns=["species", "body_mass_g"]).head(3)            # new rows: the same preprocessing
preds = trainer.predict(bundle.preprocessor.transform(new))
codecs = {c.name: c for c in bundle.info["codecs"]}
print(pd.concat([codecs[t].decode(p) for t, p in preds.items()], axis=1).round(2).to_string())
