"""How good a trained model is: reconstruction PSNR/SSIM and the sample-quality report (:mod:`.evaluate`), MS-SWD
against the real-vs-real yardstick (:mod:`.quality`), and FID where its weights are at hand (:mod:`.fid`)."""
