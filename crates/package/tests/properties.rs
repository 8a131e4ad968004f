//! Property tests: any file contents round-trip; any single-byte change to a data file is caught.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use mydata_package::{DataFile, DatasetError, PackageBuilder, verify_package};
use proptest::prelude::*;

fn package_of(fx: &Fixture, contents: &[Vec<u8>]) -> Vec<u8> {
    let files = contents
        .iter()
        .enumerate()
        .map(|(i, bytes)| DataFile {
            name: format!("data{i}.bin"),
            media_type: "application/octet-stream".into(),
            bytes: bytes.clone(),
        })
        .collect();
    let mut b = PackageBuilder::new("t-prop", "pseudo", "testing");
    b.add_dataset(fx.agency.sign_dataset("t-prop", "ds", NOW, files).unwrap())
        .unwrap();
    b.build(&fx.platform, NOW).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn any_contents_round_trip(contents in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..3000), 1..4)) {
        let fx = fixture();
        let zip = package_of(&fx, &contents);
        let r = verify_package(&zip, &fx.trust, Some(fx.platform.verifying_key()), NOW);
        prop_assert!(r.is_ok(), "{:#?}", r);
    }

    #[test]
    fn any_single_byte_change_in_a_data_file_fails(
        contents in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..3000), 1..4),
        which in any::<prop::sample::Index>(),
        at in any::<prop::sample::Index>(),
        mask in 1u8..=255,
    ) {
        let fx = fixture();
        let file = which.index(contents.len());
        let name = format!("datasets/ds/data{file}.bin");
        let pos = at.index(contents[file].len());
        let zip = rewrite(&package_of(&fx, &contents), |e| entry_mut(e, &name)[pos] ^= mask);
        let r = verify_package(&zip, &fx.trust, Some(fx.platform.verifying_key()), NOW);
        prop_assert!(!r.is_ok());
        prop_assert_eq!(
            r.datasets[0].error(),
            Some(&DatasetError::FileDigestMismatch(format!("data{file}.bin")))
        );
    }
}
