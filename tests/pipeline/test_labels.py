"""Issue 19: named label sets, the schema derived from the label list, the
melanoma class named by a setting (and "not applicable" without one)."""

import os
import pytest
from PIL import Image
import tensorflow_data_validation as tfdv

from models import features
from pipeline import configs
from pipeline import pipeline as pipeline_lib

R4_LABELS = ('Dermatitis Atopik', 'Eksim', 'Infeksi Jamur', 'Infeksi Virus',
             'Karsinoma Sel Basal', 'Kutil', 'Melanoma', 'Psoriasis',
             'Tahi Lalat', 'Tumor Jinak')


def test_named_sets_expand_and_explicit_lists_stay():
  assert configs.Settings(labels='ham10000').labels == configs.LABELS
  assert configs.Settings(labels=('isic2019',)).labels == (
      'AK', 'BCC', 'BKL', 'DF', 'MEL', 'NV', 'SCC', 'VASC')
  env = configs.Settings.from_env({'SKINLESION_LABELS': 'isic2019'})
  assert env.labels == configs.LABEL_SETS['isic2019']
  assert configs.Settings(labels=('a', 'b')).labels == ('a', 'b')


@pytest.mark.parametrize('labels', [configs.LABELS, R4_LABELS,
                                    configs.LABEL_SETS['isic2019']])
def test_schema_label_domain_is_derived_from_the_list(tmp_path, labels):
  settings = configs.Settings(home=str(tmp_path), labels=labels)
  path = pipeline_lib.derive_schema(settings)
  if len(labels) == len(configs.LABELS):  # The curated domain fits as it is.
    assert path == settings.schema_path
  else:
    with open(path) as f:
      assert path == pipeline_lib.derived_schema_path(settings, f.read())
    assert path.startswith(str(tmp_path))
  derived = tfdv.load_schema_text(path)
  domain = tfdv.get_feature(derived, features.LABEL_KEY).int_domain
  assert (domain.min, domain.max) == (0, len(labels) - 1)
  # Everything else is the curated schema's.
  curated = tfdv.load_schema_text(settings.schema_path)
  tfdv.get_feature(curated, features.LABEL_KEY).int_domain.max = (
      len(labels) - 1)
  assert derived == curated


def test_melanoma_class_is_found_by_name_in_any_case():
  assert configs.Settings().melanoma_class == 'mel'
  assert configs.Settings(labels='isic2019').melanoma_class == 'MEL'
  assert configs.Settings(labels=R4_LABELS).melanoma_class == 'Melanoma'
  assert configs.Settings(labels=('a', 'b')).melanoma_class == ''
  assert configs.Settings(labels=('a', 'b'),
                          melanoma_label='b').melanoma_class == 'b'
  assert configs.Settings(melanoma_label='none').melanoma_class == ''


def test_melanoma_label_naming_an_absent_class_fails_naming_it(tmp_path):
  settings = configs.Settings(data_root=str(tmp_path), labels=R4_LABELS,
                              melanoma_label='MEL')
  with pytest.raises(ValueError, match="melanoma_label 'MEL' is not in"):
    settings.validate()


def test_label_map_onto_an_absent_class_fails_naming_it(tmp_path):
  settings = configs.Settings(data_root=str(tmp_path), layout='isic2019',
                              labels='isic2019',
                              label_map={'AK': 'akiec', 'MEL': 'MEL'})
  with pytest.raises(ValueError, match=r"label_map maps onto \['akiec'\], "
                     "not in the label list"):
    settings.validate()
  # Onto listed classes: fine.
  configs.Settings(data_root=str(tmp_path), layout='isic2019',
                   labels='isic2019', label_map={'SCC': 'BCC'}).validate()


def test_melanoma_gate_not_applicable_without_a_melanoma_class():
  def mel_specs(settings):
    return [s for s in pipeline_lib.build_eval_config(settings).metrics_specs
            if any(pipeline_lib.MELANOMA_RECALL in m.config
                   for m in s.metrics)]
  assert not mel_specs(configs.Settings(labels=('a', 'b', 'c')))
  (spec,) = mel_specs(configs.Settings(labels=R4_LABELS))
  assert list(spec.binarize.class_ids.values) == [R4_LABELS.index('Melanoma')]


def test_isic2019_names_are_kept_with_the_isic2019_set():
  ham = configs.Settings(layout='isic2019')
  assert ham.effective_label_map['AK'] == 'akiec'
  isic = configs.Settings(layout='isic2019', labels='isic2019')
  assert isic.effective_label_map == {}


def test_another_label_list_is_another_schema_file(tmp_path):
  """ImportSchemaGen caches on the file's path: a label list that changes
  in the same home must get a new path, the same list the same one."""
  paths = [pipeline_lib.derive_schema(configs.Settings(
      home=str(tmp_path), labels=labels))
           for labels in (('a', 'b', 'c'), ('a', 'b', 'c', 'd'), ('x', 'y', 'z'))]
  assert paths[0] != paths[1] and paths[0] == paths[2]


def _jpeg(path):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.new('RGB', (8, 8), (120, 60, 30)).save(path, format='JPEG')


def test_auto_labels_are_the_archives_classes_sorted(tmp_path, tiny_archive):
  folders = tmp_path / 'folders'
  for name in ('Tumor Jinak', 'Eksim', 'Melanoma'):
    _jpeg(str(folders / name / 'a.jpg'))
  settings = configs.Settings(data_root=str(folders), layout='folders',
                              home=str(tmp_path / 'h1'), labels=('auto',))
  pipeline_lib.resolve_auto_labels(settings)
  assert settings.labels == ('Eksim', 'Melanoma', 'Tumor Jinak')
  assert settings.melanoma_class == 'Melanoma'
  # The HAM10000 layout's dx column: the demo archive's seven classes.
  ham = configs.Settings(data_root=tiny_archive, home=str(tmp_path / 'h2'),
                         labels=('auto',))
  pipeline_lib.resolve_auto_labels(ham)
  assert ham.labels == configs.LABELS
  # ISIC 2019's one-hot columns, with its own names: rows with no or two
  # diagnoses name no class (they are quarantined at ingestion).
  isic = tmp_path / 'isic'
  isic.mkdir()
  (isic / 'ISIC_2019_Training_GroundTruth.csv').write_text(
      'image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK\n'
      'ISIC_1,0,0,0,0,0,0,0,1.0,0\n'
      'ISIC_2,1.0,0,0,0,0,0,0,0,0\n'
      'ISIC_3,0,0,0,0,0,0,0,0,0\n'
      'ISIC_4,0,1.0,1.0,0,0,0,0,0,0\n')
  for i in range(1, 5):
    _jpeg(str(isic / f'ISIC_{i}.jpg'))
  auto = configs.Settings(data_root=str(isic), layout='isic2019',
                          home=str(tmp_path / 'h3'), labels=('auto',))
  pipeline_lib.resolve_auto_labels(auto)
  assert auto.labels == ('MEL', 'SCC')
  one = tmp_path / 'one'
  _jpeg(str(one / 'Eksim' / 'a.jpg'))
  with pytest.raises(ValueError, match=r"names 1 class\(es\) \['Eksim'\]"):
    pipeline_lib.resolve_auto_labels(configs.Settings(
        data_root=str(one), layout='folders', home=str(tmp_path / 'h4'),
        labels=('auto',)))
