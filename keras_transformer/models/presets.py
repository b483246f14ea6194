"""Named model sizes."""

PRESETS = {
    # Multi30k-sized model: 4 layers, d_model 128, 4 heads, d_ff 256.
    "tiny": dict(num_layers=4, d_model=128, num_heads=4, d_ff=256, dropout=0.3),
    # The paper's base model (Table 3).
    "base": dict(num_layers=6, d_model=512, num_heads=8, d_ff=2048, dropout=0.1),
    # The paper's big model (Table 3).
    "big": dict(num_layers=6, d_model=1024, num_heads=16, d_ff=4096, dropout=0.3),
}
