"""`--metadata CSV` for predict / serve (pipeline/metadata_csv.py)."""

import pytest

from pipeline import metadata_csv


def _write(tmp_path, text, name='meta.csv'):
  path = tmp_path / name
  path.write_bytes(text.encode('utf-8'))
  return str(path)


def test_ham10000_layout_normalized_as_ingestion_does(tmp_path):
  path = _write(tmp_path, '\ufefflesion_id,image_id,dx,dx_type,age,sex,'
                'localization,dataset\n'
                'HAM_1,ISIC_1,mel,histo,55.0,male,back,vidir_modern\n'
                'HAM_2,ISIC_2,nv,follow_up,,unknown,,vidir_modern\n'
                'HAM_3,ISIC_3,nv,follow_up,30, F ,lower extremity,rosendahl\n')
  table = metadata_csv.read(path)
  assert table.layout == 'ham10000'
  assert table.rows == {
      'ISIC_1': {'age': 55.0, 'sex': 'male', 'localization': 'back'},
      'ISIC_2': {'age': None, 'sex': 'unknown', 'localization': 'unknown'},
      'ISIC_3': {'age': 30.0, 'sex': 'female',
                 'localization': 'lower extremity'}}
  rows, missing = table.lookup(['ISIC_3', 'ISIC_9'])
  assert missing == ['ISIC_9']
  assert rows[0]['sex'] == 'female'
  assert rows[1] == {'age': None, 'sex': 'unknown', 'localization': 'unknown'}


def test_isic2019_layout(tmp_path):
  path = _write(tmp_path, 'image,age_approx,anatom_site_general,lesion_id,'
                'sex\nISIC_0000000,55,anterior torso,,female\n'
                'ISIC_0000001,,,BCN_1,\n')
  table = metadata_csv.read(path)
  assert table.layout == 'isic2019'
  assert table.rows['ISIC_0000000'] == {
      'age': 55.0, 'sex': 'female', 'localization': 'anterior torso'}
  assert table.rows['ISIC_0000001'] == {
      'age': None, 'sex': 'unknown', 'localization': 'unknown'}


@pytest.mark.parametrize('text,message', [
    ('image_id,age,sex,localization\nA,50,male\n',
     'line 2: 3 fields, the header has 4'),
    ('image_id,age,sex,localization\nA,50,male,back\nB,old,male,back\n',
     "line 3: age 'old' is not a number"),
    ('image_id,age,sex,localization\nA,50,male,back\nA,51,male,back\n',
     "line 3: 'A' already on line 2"),
    ('image_id,age,sex,localization\n,50,male,back\n', 'line 2: no image_id'),
    ('image,age,sex\nA,50,male\n', 'has neither layout'),
])
def test_a_malformed_csv_is_an_error_naming_the_line(tmp_path, text,
                                                     message):
  with pytest.raises(metadata_csv.MetadataError, match=message):
    metadata_csv.read(_write(tmp_path, text))


def test_not_utf8_or_missing_file(tmp_path):
  path = tmp_path / 'latin1.csv'
  path.write_bytes('image_id,age,sex,localization\nA,50,m\xe4le,back\n'
                   .encode('latin1'))
  with pytest.raises(metadata_csv.MetadataError, match='not UTF-8'):
    metadata_csv.read(str(path))
  with pytest.raises(metadata_csv.MetadataError, match='no such file'):
    metadata_csv.read(str(tmp_path / 'absent.csv'))
