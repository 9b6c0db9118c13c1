//! Every TOML example in the README's configuration section is a configuration loupe
//! accepts: the documentation cannot drift from the parser.

use std::path::Path;

use loupe_control::config::Config;

#[test]
fn every_toml_example_in_the_readme_loads() {
    let readme_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let readme = std::fs::read_to_string(&readme_path).expect("README.md is readable");
    let mut examples = 0;
    let mut rest = readme.as_str();
    while let Some(start) = rest.find("```toml\n") {
        let body = &rest[start + "```toml\n".len()..];
        let end = body.find("```").expect("a closed toml block");
        let example = &body[..end];
        if let Err(err) = Config::parse(example, Path::new("README.md example")) {
            panic!("README example {} does not load: {err}\n{example}", examples + 1);
        }
        examples += 1;
        rest = &body[end..];
    }
    assert!(examples >= 1, "no ```toml examples found in {}", readme_path.display());
}
