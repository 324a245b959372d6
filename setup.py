"""skin-lesion-tfx: a TFX pipeline for dermoscopic skin-lesion classification."""

import setuptools

setuptools.setup(
    name='skin-lesion-tfx',
    version='0.1.0',
    description=('TFX pipeline: dermoscopy archives -> validated, evaluated, '
                 'gated classifier as SavedModel and TFLite.'),
    python_requires='>=3.10,<3.11',
    packages=['pipeline', 'components', 'components.image_example_gen',
              'components.run_report', 'models', 'mobile_export'],
    # The run report's jinja2 templates and CSS (components/run_report/render.py).
    package_data={'components.run_report': ['templates/*.html',
                                            'templates/*.md',
                                            'templates/*.css']},
    install_requires=[
        'tfx==1.16.0',
        'tflite-support==0.4.4',
        'apache-beam[gcp]==2.61.0',
        'kfp==2.5.0',
        'protobuf==3.20.3',
    ],
    entry_points={'console_scripts': ['skinlesion=pipeline.cli:main']},
    license='Apache-2.0',
)
